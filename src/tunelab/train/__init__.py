"""The one training path."""
