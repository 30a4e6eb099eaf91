"""Error types of the deepseek package.

Every error subclasses `DeepseekError` and the builtin that fits, so callers can catch
`ValueError`/`FileNotFoundError` without importing this module.
"""

from __future__ import annotations


class DeepseekError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(DeepseekError, ValueError):
    """A model or training configuration is inconsistent; the message names the field."""


class SequenceTooLongError(DeepseekError, ValueError):
    """A sequence is longer than the model's maximum position; shorten it or raise the limit."""


class CheckpointError(DeepseekError, ValueError):
    """A checkpoint does not fit the model (missing or unexpected keys, wrong shapes)."""


class CheckpointNotFoundError(DeepseekError, FileNotFoundError):
    """No config.json or safetensors file where a checkpoint was expected."""


class DataError(DeepseekError, ValueError):
    """Training data is unreadable (corrupt parquet) or empty."""
