"""The state of one training run: what its epochs share, and how it is checkpointed.

:class:`RunState` holds the data, model, losses and the schedule's state (stage, best epochs,
patience, mining weights) that :mod:`train.trainer`'s loop moves forward; :func:`save_last`
writes it after every epoch so that ``--resume`` continues exactly where a run stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from edge_detect.errors import CheckpointError
from train.checkpoint import load_checkpoint, save_checkpoint
from train.config import TrainConfig
from train.losses import ClusterCentroidLoss
from train.models import Network, StreamingLSTM
from train.splits import Dataset

__all__ = [
    "BEST_NAME",
    "LAST_NAME",
    "RunResult",
    "RunState",
    "copy_state",
    "json_default",
    "lr_factor",
    "payload",
    "resume_state",
    "save_last",
]

LAST_NAME, BEST_NAME = "checkpoint_last.pt", "checkpoint.pt"


@dataclass
class RunResult:
    """Where a run wrote its results, and its headline numbers."""

    run_dir: Path
    checkpoint: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    test_clips: list[dict[str, Any]] = field(default_factory=list)
    """Per test clip: group, target, predicted class and probabilities (for bootstraps)."""


@dataclass
class RunState:
    """What the epochs share: data, model, losses, and the state of the schedule."""

    config: TrainConfig
    data: Dataset
    model: Network
    net: torch.nn.Module
    builder: Any
    """A :class:`train.sequences.SequenceBuilder` (or the shipped background's builder)."""
    val_sequences: list[Any]
    val_owner: list[int]
    """The class of each validation sequence (its clip's, background for extra negatives)."""
    frame_loss: torch.nn.Module
    cluster_loss: ClusterCentroidLoss | None
    mean_clips: list[Any]
    rank: int
    world: int
    run_dir: Path
    stage: int = 0
    """0: a baseline's only stage; 1 and 2: the cluster method's embedding and classifier stages."""
    stage_start: int = 0
    """First epoch of the current stage."""
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"score": math.inf})
    """Best epoch of the final stage (0 or 2): score, epoch, model_state."""
    best_embedding: dict[str, Any] = field(default_factory=lambda: {"score": math.inf})
    """Best epoch of the embedding stage: score, epoch, model_state, cluster_state."""
    bad_epochs: int = 0
    """Epochs since the current stage's best."""
    split_epoch: int = 0
    """Epoch after which the cluster loss split the classes into clusters (0: not yet)."""
    optimiser: torch.optim.Optimizer | None = None
    reservoir: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    """The epoch's recent embeddings per class, for the warm re-fits of the centroids."""
    background_weights: npt.NDArray[np.float64] | None = None
    """How often each training background clip is drawn (hard-negative mining); None: evenly."""
    mined: dict[str, Any] | None = None
    """The latest mining round's figures, for the next epoch's record."""

    @property
    def stream_model(self) -> StreamingLSTM | None:
        """The model when it is the streaming LSTM (long sequences need one), else None."""
        return self.model if isinstance(self.model, StreamingLSTM) else None

    def budget(self) -> int:
        """Epochs the current stage may run at most."""
        opt = self.config.optim
        if self.stage == 1:
            return opt.embed_epochs
        return opt.epochs - self.stage_start

    def long_batch_size(self) -> int:
        """Long event-free sequences per batch: about as many frames as a batch of clips'."""
        aug = self.config.augment
        typical_s = aug.event_max_s + aug.context_min_s + aug.context_max_s
        return max(1, round(self.config.optim.batch_size * typical_s / aug.background_seq_s))

    def batches_per_epoch(self) -> int:
        """Batches in one epoch: every event item and the epoch's background share."""
        opt = self.config.optim
        items = self.data.parts["train"]
        backgrounds = sum(c.target == self.data.background_index for c in items)
        events = len(items) - backgrounds
        per_epoch_bg = min(opt.background_per_epoch or backgrounds, backgrounds)
        batches = math.ceil((events + per_epoch_bg) // self.world / opt.batch_size)
        if self.stream_model is not None:
            longs = self.config.augment.background_seq_per_epoch // self.world
            batches += longs // self.long_batch_size()
        return batches


def copy_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached copy of a state dict (a best epoch kept in memory)."""
    return {k: v.detach().clone() for k, v in state.items()}


def save_last(loop: RunState, run_dir: Path, epoch: int) -> None:
    """Write ``run_dir/checkpoint_last.pt``: the model and everything ``--resume`` needs."""
    assert loop.optimiser is not None
    save_checkpoint(
        run_dir / LAST_NAME,
        payload(
            loop,
            loop.model.state_dict(),
            resume={
                "epoch": epoch + 1,
                "step": loop.step,
                "stage": loop.stage,
                "stage_start": loop.stage_start,
                "bad_epochs": loop.bad_epochs,
                "split_epoch": loop.split_epoch,
                "background_weights": loop.background_weights,
                "optimizer_state": loop.optimiser.state_dict(),
                "cluster_loss": (
                    loop.cluster_loss.state_dict() if loop.cluster_loss is not None else None
                ),
                "cluster_fits": loop.cluster_loss.fits if loop.cluster_loss is not None else 0,
                "history": loop.history,
                "best": loop.best,
                "best_embedding": loop.best_embedding,
            },
        ),
    )


def json_default(value: Any) -> Any:
    """numpy numbers as JSON numbers (for metrics.json)."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def payload(loop: RunState, state: dict[str, Any], **extra: Any) -> dict:
    """A checkpoint's contents: labels, configs, weights, data provenance, ``extra``."""
    return {
        "labels": loop.data.labels,
        "model_config": loop.model.config.to_dict(),
        "feature_config": loop.config.features.to_dict(),
        "train_config": loop.config.to_dict(),
        "model_state": state,
        "data": loop.data.provenance,
        **extra,
    }


def resume_state(path: Path, config: TrainConfig) -> dict[str, Any]:
    """The resume state of ``path``, refused when the config differs in more than epochs."""
    state = load_checkpoint(path)
    if "resume" not in state:
        raise CheckpointError(f"{path} holds no resume state; start without --resume")
    saved = dict(state["train_config"])
    current = config.to_dict()
    saved["optim"] = {**saved["optim"], "epochs": current["optim"]["epochs"]}
    if saved != current:
        diff = sorted(
            f"{section}.{key}"
            for section in current
            for key in current[section]
            if saved.get(section, {}).get(key) != current[section][key]
        )
        raise CheckpointError(
            f"cannot resume {path}: the config differs in {diff}; only optim.epochs may change. "
            "Use the run's own config or start a new run folder"
        )
    return state


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5% at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))
