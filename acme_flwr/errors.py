"""The error a bad configuration value raises, shared by the schema and the registries (neither imports the other)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key and what is allowed."""
