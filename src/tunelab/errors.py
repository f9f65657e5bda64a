"""Errors that reach the user as one sentence, never as a traceback."""

from __future__ import annotations


class TunelabError(Exception):
    """A mistake in the user's input or environment, told with where it is and what to do.

    The CLI prints the message and exits with code 2; the Python API lets it propagate.
    """

    exit_code = 2
