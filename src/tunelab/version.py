"""tunelab's version, on its own so that low-level modules can read it without the API."""

__version__ = "0.1.0"
