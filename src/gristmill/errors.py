"""The exception tree every gristmill error comes from.

The CLI turns any `GristmillError` into a one-line message and exit code 2, so each message
names the file, line or row at fault and says what to do about it.
"""

from __future__ import annotations


class GristmillError(Exception):
    """Base class: an error a user can fix (bad input, bad option, damaged store)."""


class ConfigError(GristmillError):
    """An option or parameter is invalid, or an output already exists."""


class InputError(GristmillError):
    """An input file or record cannot be read (missing path, truncated line, bad UTF-8)."""


class SchemaError(InputError):
    """Input records lack a required field or hold the wrong type in it."""


class CorruptStoreError(GristmillError):
    """A store on disk does not match its manifest (missing shard, size, footer, checksum)."""


class MissingDependencyError(GristmillError):
    """An optional dependency is not installed; the message gives the install command."""


class ModelError(GristmillError):
    """A model cannot be loaded (no weights, no tokenizer) or produced unusable output."""
