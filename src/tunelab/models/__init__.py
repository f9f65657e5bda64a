"""Model sources and loading."""
