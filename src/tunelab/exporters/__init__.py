"""Exporting trained runs."""
