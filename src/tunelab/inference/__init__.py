"""Loading a base model, a run (base + adapter) or an exported folder for generation."""
