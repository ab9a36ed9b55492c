"""edge-detect: rare sound event detection on small devices.

The runtime package: audio input, the log-mel front end, the streaming ONNX model, detection and
alerts. It needs numpy, onnxruntime, soxr and sounddevice, and never imports torch.

The names here are the package's public API (``tests/test_public_api.py`` pins them); each
module's own ``__all__`` is its surface. A minimal detector::

    import edge_detect
    from edge_detect.sinks import JsonLinesSink
    from edge_detect.sources import WavFileSource

    model = edge_detect.load_model()  # the bundled model
    pipeline = edge_detect.Pipeline(model, [JsonLinesSink()])
    pipeline.run(WavFileSource("clip.wav", model.feature_config.sample_rate_hz, realtime=False))
"""

# first: modules that import it from the package must find it even while the package loads
__version__ = "0.2.0"

from edge_detect.alerts import Alert, HealthEvent  # noqa: E402
from edge_detect.audio import (  # noqa: E402
    Audio,
    StreamingResampler,
    read_wav,
    resample,
    to_mono,
    write_wav,
)
from edge_detect.errors import (  # noqa: E402
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
from edge_detect.features import FeatureConfig, StreamingLogMel, log_mel  # noqa: E402
from edge_detect.model import StreamingModel, load_model  # noqa: E402
from edge_detect.pipeline import Pipeline  # noqa: E402

__all__ = [
    "Alert",
    "Audio",
    "AudioDeviceError",
    "AudioError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "EdgeDetectError",
    "FeatureConfig",
    "HealthEvent",
    "MissingExtraError",
    "ModelError",
    "Pipeline",
    "SampleRateError",
    "StreamingLogMel",
    "StreamingModel",
    "StreamingResampler",
    "TrainingError",
    "__version__",
    "load_model",
    "log_mel",
    "read_wav",
    "resample",
    "to_mono",
    "write_wav",
]
