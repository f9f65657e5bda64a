"""The web UI: `tunelab ui`."""
