"""Hard-negative mining: what in the training background makes the model fire, drawn more often.

A detector that hears only short contexts around events learns little about the rare background
stretch that looks like an event; yet those stretches are its false alarms. Every
``optim.mining_every`` epochs the current model runs over *all* training background clips,
joined in a seeded order into long streams (the state carried, as on the device), and each
clip's peak smoothed score per event class is kept (:func:`background_peaks`). Clips that fire
(peak >= ``optim.mining_threshold``) are then drawn ``1 + optim.mining_boost`` times as often,
as their own sequences, as context around events, as beds under them and in the long event-free
sequences (:func:`mining_weights`), as openWakeWord does with its false positives.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from edge_detect.features import log_mel
from train.config import TrainConfig
from train.evaluate import SMOOTHING_MS
from train.losses import HardNegatives, PooledEvents
from train.models import StreamingLSTM, probabilities
from train.run_state import RunState
from train.sequences import ClipAudio, SequenceBuilder

__all__ = [
    "HARD_NEGATIVE_RAMP_EPOCHS",
    "MINING_STREAM_S",
    "background_peaks",
    "mining_round",
    "mining_weights",
    "ramp_hard_negatives",
]

log = logging.getLogger("train.trainer")  # the trainer's log: one place to read a run

MINING_STREAM_S = 60.0
"""Length of each stream the background clips are joined into, in s."""
STREAMS_PER_BATCH = 8
"""Streams run through the model together."""
HARD_NEGATIVE_RAMP_EPOCHS = 3
"""Epochs over which the hardest-background term reaches its weight."""


@torch.no_grad()
def background_peaks(
    model: StreamingLSTM,
    backgrounds: Sequence[ClipAudio],
    config: TrainConfig,
    seed: int,
    *,
    stream_s: float = MINING_STREAM_S,
) -> npt.NDArray[np.float32]:
    """Peak smoothed score of every class on every background clip, shape (clips, classes).

    The clips are joined in a seeded order into streams of about ``stream_s`` and each stream is
    run from a zero state, so a clip is scored in the context of the clips before it, as on
    the device. Scores are smoothed by a moving average of ``SMOOTHING_MS`` (the runtime's
    default smoothing).
    """
    feat = config.features
    hop = feat.hop_samples
    rng = np.random.default_rng([seed, 31])
    order = rng.permutation(len(backgrounds))
    streams: list[list[int]] = [[]]
    length = 0
    for i in order:
        if length >= stream_s * feat.sample_rate_hz and streams[-1]:
            streams.append([])
            length = 0
        streams[-1].append(int(i))
        length += len(backgrounds[i].audio)
    smooth = max(1, round(SMOOTHING_MS / feat.hop_ms))
    peaks = np.zeros((len(backgrounds), config.model.num_classes), dtype=np.float32)
    model.eval()
    for first in range(0, len(streams), STREAMS_PER_BATCH):
        batch = streams[first : first + STREAMS_PER_BATCH]
        audio, bounds = [], []
        for members in batch:
            pieces = [np.pad(backgrounds[i].audio, (0, -len(backgrounds[i].audio) % hop))
                      for i in members]  # fmt: skip
            starts = np.cumsum([0] + [len(p) for p in pieces]) // hop  # frame of each clip
            audio.append(np.concatenate(pieces))
            bounds.append(starts)
        feats = [log_mel(a, feat) for a in audio]
        longest = max(len(f) for f in feats)
        x = torch.zeros(len(feats), longest, feat.n_mels)
        for b, f in enumerate(feats):
            x[b, : len(f)] = torch.from_numpy(f)
            x[b, len(f) :] = x[b, len(f) - 1] if len(f) else 0.0
        logits, _, _ = model(x)
        p = probabilities(logits, model.config.output)  # (B, T, C)
        kernel = torch.ones(1, 1, smooth) / smooth
        padded = torch.nn.functional.pad(p.permute(0, 2, 1), (smooth - 1, 0), mode="replicate")
        smoothed = torch.nn.functional.conv1d(
            padded.reshape(-1, 1, padded.shape[-1]), kernel
        ).reshape(p.shape[0], p.shape[2], -1)  # (B, C, T)
        for b, members in enumerate(batch):
            for k, i in enumerate(members):
                lo, hi = int(bounds[b][k]), max(int(bounds[b][k + 1]), int(bounds[b][k]) + 1)
                part = smoothed[b, :, lo : min(hi, len(feats[b]))]
                if part.shape[1]:
                    peaks[i] = part.max(dim=1).values.numpy()
    return peaks


def mining_weights(
    peaks: npt.NDArray[np.float32],
    event_columns: Sequence[int],
    *,
    threshold: float,
    boost: float,
    top: float = 1.0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Sampling weight of every background clip: ``1 + boost`` for a clip on which some event
    class fired (peak >= ``threshold``, and among the ``top`` share of clips by that class's
    peak), 1 otherwise; and which clips fired."""
    columns = peaks[:, list(event_columns)]
    cut = np.quantile(columns, 1.0 - top, axis=0, method="higher") if top < 1.0 else -np.inf
    fired = np.asarray(((columns >= threshold) & (columns >= cut)).any(axis=1), dtype=bool)
    return np.asarray(1.0 + boost * fired, dtype=np.float64), fired


def ramp_hard_negatives(loop: RunState, epoch: int) -> None:
    """The hardest-background term's weight this epoch: 0 before ``optim.hard_negative_from_
    epoch``, then rising linearly to ``optim.hard_negative_weight`` over
    :data:`HARD_NEGATIVE_RAMP_EPOCHS` epochs."""
    opt = loop.config.optim
    ramp = (epoch - opt.hard_negative_from_epoch + 1) / HARD_NEGATIVE_RAMP_EPOCHS
    weight = opt.hard_negative_weight * min(1.0, max(0.0, ramp))
    if isinstance(loop.frame_loss, HardNegatives):
        loop.frame_loss.weight = weight
    elif isinstance(loop.frame_loss, PooledEvents):
        loop.frame_loss.hard_weight = weight


def mining_round(loop: RunState, epoch: int) -> None:
    """A hard-negative mining round (:mod:`train.mining`) before ``epoch``, when one is due."""
    opt = loop.config.optim
    stream_model = loop.stream_model
    if not opt.mining_every or stream_model is None or loop.stage == 1:
        return
    if not isinstance(loop.builder, SequenceBuilder):  # the shipped background: no clips
        return
    if epoch == 0 or epoch % opt.mining_every:
        return
    bg = loop.data.background_index
    peaks = background_peaks(stream_model, loop.builder.backgrounds, loop.config, opt.seed + epoch)
    events = [c for c in range(len(loop.data.labels)) if c != bg]
    weights, fired = mining_weights(
        peaks, events, threshold=opt.mining_threshold, boost=opt.mining_boost, top=opt.mining_top
    )
    loop.background_weights = weights
    loop.builder.set_background_weights(weights)
    per_class = {
        loop.data.labels[c]: int((peaks[:, c] >= opt.mining_threshold).sum()) for c in events
    }
    loop.mined = {"epoch": epoch, "fired": int(fired.sum()), "per_class": per_class}
    log.info(
        "mining before epoch %d: %d of %d training background clips fire %s",
        epoch + 1,
        int(fired.sum()),
        len(fired),
        per_class,
    )
