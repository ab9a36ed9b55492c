"""edge-detect: rare sound event detection on small devices.

The runtime package: audio input, the log-mel front end, the streaming ONNX model, detection and
alerts. It needs numpy, onnxruntime, soxr and sounddevice, and never imports torch.
"""

from edge_detect.audio import Audio, StreamingResampler, read_wav, resample, to_mono, write_wav
from edge_detect.errors import (
    AudioDeviceError,
    AudioError,
    CheckpointError,
    ConfigError,
    DatasetError,
    EdgeDetectError,
    MissingExtraError,
    ModelError,
    SampleRateError,
    TrainingError,
)
from edge_detect.features import FeatureConfig, StreamingLogMel, log_mel

__version__ = "0.1.0"

__all__ = [
    "Audio",
    "AudioDeviceError",
    "AudioError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "EdgeDetectError",
    "FeatureConfig",
    "MissingExtraError",
    "ModelError",
    "SampleRateError",
    "StreamingLogMel",
    "StreamingResampler",
    "TrainingError",
    "__version__",
    "log_mel",
    "read_wav",
    "resample",
    "to_mono",
    "write_wav",
]
