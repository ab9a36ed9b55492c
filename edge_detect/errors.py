"""Every error edge-detect raises on purpose, in one tree.

::

    EdgeDetectError                 base: catch this to catch them all
    ├── AudioError                  unreadable, empty, truncated or wrong-format audio
    │   └── SampleRateError         a sample rate we cannot convert from or to
    ├── ConfigError                 a config file, key, type or value that is wrong
    ├── DatasetError                a manifest, dataset layout or label map that is wrong
    ├── ModelError                  a model file that is not one, or whose contract we cannot meet
    ├── CheckpointError             a training checkpoint that is not one or is incompatible
    ├── TrainingError               training cannot go on (NaN embedding, empty class, ...)
    ├── AudioDeviceError            the microphone cannot be opened or was lost
    └── MissingExtraError           an optional dependency is missing (names the pip install)

Each message says what was expected, what arrived and how to fix it. The CLI prints the message
without a traceback (``--debug`` shows it); library users catch the class they care about.
"""

from __future__ import annotations

__all__ = [
    "AudioDeviceError",
    "AudioError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "EdgeDetectError",
    "MissingExtraError",
    "ModelError",
    "SampleRateError",
    "TrainingError",
]


class EdgeDetectError(Exception):
    """Base class of every error edge-detect raises on purpose."""


class AudioError(EdgeDetectError):
    """Audio that cannot be read or used: unreadable, empty, truncated or of the wrong format."""


class SampleRateError(AudioError):
    """A sample rate that cannot be converted (not positive, or not one we support)."""


class ConfigError(EdgeDetectError):
    """A configuration file, key, type or value that is wrong."""


class DatasetError(EdgeDetectError):
    """A manifest, dataset layout or label map that is wrong."""


class ModelError(EdgeDetectError):
    """A model file that is not one, or whose metadata the runtime cannot honour."""


class CheckpointError(EdgeDetectError):
    """A training checkpoint that is not one or comes from an incompatible version."""


class TrainingError(EdgeDetectError):
    """Training cannot go on: an empty class, a NaN embedding, ..."""


class AudioDeviceError(EdgeDetectError):
    """The audio input device cannot be opened, or it was lost."""


class MissingExtraError(EdgeDetectError):
    """An optional dependency is missing; the message names the exact pip command."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package {module!r}, which is not installed. "
            f"Install it with: pip install 'edge-detect[{extra}]'"
        )
        self.module = module
        self.extra = extra
