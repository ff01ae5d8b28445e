"""The errors a user sees for a wrong config or data file: each message names the field,
file or row at fault. Imports nothing."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config value is wrong; the message names the dotted field."""


class DataError(ValueError):
    """A data row is malformed; the message names the file, row and field."""
