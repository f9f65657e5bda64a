"""`tunelab serve`: an OpenAI-compatible server for runs and models (extra `serve`)."""
