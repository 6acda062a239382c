"""Exceptions raised by the pure statistics layer."""

__all__ = ["ConfigError", "MonitorError", "ShapeMismatch"]


class MonitorError(Exception):
    """Root of every error raised by :mod:`monitor`."""


class ConfigError(MonitorError):
    """An experiment configuration is invalid; the message names the field and the reason."""


class ShapeMismatch(MonitorError):
    """Two statistics objects describe different experiments and cannot be merged."""
