"""The public API is what ``__all__`` says: every listed name exists, and the package's
top-level names are exactly the documented set."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import edge_detect

MODULES = sorted(
    f"edge_detect.{m.name}"
    for m in pkgutil.iter_modules(edge_detect.__path__)
    if m.name != "__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_declares_existing_names(name: str) -> None:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists missing names {missing}"
    assert len(set(module.__all__)) == len(module.__all__)


def test_top_level_api() -> None:
    assert sorted(edge_detect.__all__) == sorted(
        [
            "Audio", "AudioDeviceError", "AudioError", "CheckpointError", "ConfigError",
            "DatasetError", "EdgeDetectError", "FeatureConfig", "MissingExtraError", "ModelError",
            "SampleRateError", "StreamingLogMel", "StreamingResampler", "TrainingError",
            "__version__", "log_mel", "read_wav", "resample", "to_mono", "write_wav",
        ]
    )  # fmt: skip
    for name in edge_detect.__all__:
        assert getattr(edge_detect, name) is not None
