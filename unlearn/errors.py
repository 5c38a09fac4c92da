"""Errors for bad input.

Both are raised before any training starts, and their message names the offending config key or file, so a
user can fix the input without reading a traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key is missing, unknown or has an invalid value."""


class DataError(ValueError):
    """A data file is missing or malformed (wrong schema, unreadable JSON)."""
