"""Training checkpoints: one file that carries the weights and every config the next step needs.

A checkpoint is a ``torch.save``'d dict::

    format          "edge-detect-checkpoint"
    version         CHECKPOINT_VERSION
    labels          list of class names, index = output unit
    model_config    ModelConfig as a dict
    feature_config  FeatureConfig as a dict
    train_config    the training config as a dict (free form, for provenance and resume)
    model_state     the model's state_dict
    detection       optional {label: ClassDetection dict}: post-processing defaults
    metrics         optional validation metrics (JSON-able)
    data            optional provenance of the training data (manifest, sources, licenses)
    resume          optional {"epoch", "step", "optimizer_state", "rng_state", ...}
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:  # numpy >= 2
    from numpy._core import multiarray as np_multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as np_multiarray  # type: ignore[no-redef]

from edge_detect.errors import CheckpointError
from edge_detect.features import FeatureConfig
from train.models import ModelConfig, Network, build_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "file_sha256",
    "load_checkpoint",
    "model_from_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "edge-detect-checkpoint"
CHECKPOINT_VERSION = 1
_REQUIRED = ("labels", "model_config", "feature_config", "model_state")
_NUMPY_SCALAR_GLOBALS: list[Any] = [
    np_multiarray.scalar,
    np_multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    *(type(np.dtype(kind)) for kind in ("f4", "f8", "i4", "i8", "u1", "b1")),
]
"""What a checkpoint's numpy values (a metric stored as ``np.float64``, an array in the resume
state) unpickle through: data constructors only, allowed beside torch's own list; whatever an
array holds is unpickled by the same restricted unpickler, so nothing can run code."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> str:
    """Write atomically (a crash never leaves a half-written checkpoint); returns its SHA-256."""
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint payload lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return file_sha256(path)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint; raises CheckpointError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # weights_only: torch's restricted unpickler (tensors, containers, numbers, strings). A
        # full unpickler would run whatever code a crafted file names before we could refuse it.
        with torch.serialization.safe_globals(_NUMPY_SCALAR_GLOBALS):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose ..."
        unsafe = re.search(r"unsupported global:?\s+(?:GLOBAL\s+)?([\w.]+)", str(exc), re.I)
        if unsafe is None:
            raise CheckpointError(
                f"{path} is not a readable edge-detect checkpoint (not a torch.save file); "
                "expected a file written by 'edge-detect train'"
            ) from None
        raise CheckpointError(
            f"{path} names {unsafe.group(1)}, not only tensors, numbers and strings: refused "
            "without running them (a checkpoint from 'edge-detect train' has none). Load only "
            "checkpoints you trust."
        ) from None
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(
            f"{path} is not a readable edge-detect checkpoint ({type(exc).__name__}: {exc}); "
            "expected a file written by 'edge-detect train'"
        ) from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not an edge-detect checkpoint (expected format {CHECKPOINT_FORMAT!r}, "
            f"found {data.get('format') if isinstance(data, dict) else type(data).__name__!r})"
        )
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} is a version-{data.get('version')} checkpoint; this edge-detect reads "
            f"version {CHECKPOINT_VERSION}. Re-train or use the matching edge-detect release."
        )
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; it is incomplete")
    return data


def model_from_checkpoint(data: dict[str, Any]) -> tuple[Network, FeatureConfig]:
    """Rebuild the network (in eval mode) and its feature config from a loaded checkpoint."""
    try:
        model_config = ModelConfig(**data["model_config"])
        feature_config = FeatureConfig.from_dict(data["feature_config"])
        model = build_model(model_config)
        model.load_state_dict(data["model_state"])
    except (TypeError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint does not match this model code: {exc}") from None
    if model_config.num_classes != len(data["labels"]):
        raise CheckpointError(
            f"checkpoint has {len(data['labels'])} labels "
            f"but a {model_config.num_classes}-class model"
        )
    return model.eval(), feature_config
