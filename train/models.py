"""The networks: a small streaming LSTM (the deployed model) and a CNN (for comparison).

Both map log-mel frames to an embedding and, through a linear classifier head, to class logits.
The LSTM is unidirectional and runs frame by frame with carried state ``(h, c)``, so the same
weights serve clip training and the endless stream on the device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edge_detect.errors import ConfigError

__all__ = [
    "HEADS",
    "OUTPUTS",
    "CNNClassifier",
    "CentroidHead",
    "ModelConfig",
    "Network",
    "StreamingLSTM",
    "build_model",
    "probabilities",
]

HEADS = ("linear", "centroid")
OUTPUTS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the network; stored in checkpoints."""

    kind: str = "lstm"
    """'lstm' (streaming, deployed) or 'cnn' (clip-level, for comparison)."""
    n_mels: int = 64
    """Input feature dimension (must equal FeatureConfig.n_mels)."""
    num_classes: int = 4
    """Number of output classes (labels, background included)."""
    hidden_size: int = 64
    """LSTM units per layer, or CNN channels of the last block."""
    num_layers: int = 2
    """LSTM layers (ignored by the CNN)."""
    embedding_dim: int = 32
    """Size of the embedding the cluster-centroid loss works on."""
    dropout: float = 0.1
    """Dropout between LSTM layers and before the classifier, during training only."""
    head: str = "linear"
    """'linear' (a linear layer on the embedding) or 'centroid' (a cosine classifier whose
    prototypes start at the cluster-centroid loss's centroids; set by the trainer for
    ``optim.method = "cluster"``)."""
    head_clusters: list[int] = field(default_factory=list)
    """'centroid' head: prototypes per class, in label order (the loss's clusters per class)."""
    front_channels: int = 0
    """LSTM only: 0 = log-mel frames straight into the LSTM; c > 0 = a small convolutional front
    over each frame's mel bands first (two 1-D convolutions of c channels with pooling, then a
    projection): spectral shapes (harmonics, formants, broadband bursts) learnt once, for the
    LSTM to follow in time. Per frame, so streaming needs no extra state."""
    output: str = "softmax"
    """'softmax' (one distribution over the classes, background included: every frame is *some*
    class) or 'sigmoid' (one independent probability per class, one-vs-rest: a frame may be
    none of them, so an unfamiliar sound can score low everywhere)."""

    def __post_init__(self) -> None:
        if self.kind not in ("lstm", "cnn"):
            raise ConfigError(f"model kind must be 'lstm' or 'cnn', got {self.kind!r}")
        if self.head not in HEADS:
            raise ConfigError(f"model head must be one of {HEADS}, got {self.head!r}")
        if self.output not in OUTPUTS:
            raise ConfigError(f"model output must be one of {OUTPUTS}, got {self.output!r}")
        if self.head == "centroid" and (
            len(self.head_clusters) != self.num_classes or min(self.head_clusters) < 1
        ):
            raise ConfigError(
                f"model head 'centroid' needs head_clusters with one positive count per class "
                f"({self.num_classes}), got {self.head_clusters}"
            )
        for name in ("n_mels", "num_classes", "hidden_size", "num_layers", "embedding_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"model {name} must be a positive integer, got {value!r}")
        if not isinstance(self.front_channels, int) or self.front_channels < 0:
            raise ConfigError(
                f"model front_channels must be an integer >= 0, got {self.front_channels!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what checkpoints store)."""
        return dataclasses.asdict(self)


class FeatureNorm(nn.Module):
    """Per-band standardisation with statistics of the training set, kept inside the model so
    that the exported graph takes raw log-mel frames."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class CentroidHead(nn.Module):
    r"""Cosine classifier over cluster prototypes: the cluster-centroid geometry as the readout.

    Prototype :math:`w_k` (unit length) belongs to one class; a class's logit is a soft maximum
    over its prototypes of the scaled cosine similarity,

    .. math:: \ell_c = \log \sum_{k \in c} \exp(s \cos(z, w_k)) + b_c ,

    with a learned scale :math:`s` (started at :math:`2 / T`, the centroid loss's sharpness, since
    :math:`-\|z - w\|^2 / T = (2 \cos - 2) / T`) and a learned bias :math:`b_c` (started at
    :math:`-\log K_c`, so a class with many prototypes gets no head start). Started from the
    loss's centroids (:meth:`init_from`), its argmax is the nearest-centroid rule the embedding
    stage trained for; fine-tuning then moves prototypes and encoder together. Exports to ONNX
    with plain operators (the per-class sum is a product with a 0/1 membership matrix).
    """

    membership: torch.Tensor

    def __init__(self, embedding_dim: int, clusters_per_class: Sequence[int]) -> None:
        super().__init__()
        owners = [c for c, k in enumerate(clusters_per_class) for _ in range(k)]
        self.weight = nn.Parameter(F.normalize(torch.randn(len(owners), embedding_dim), dim=1))
        membership = torch.zeros(len(owners), len(clusters_per_class))
        membership[torch.arange(len(owners)), torch.tensor(owners)] = 1.0
        self.register_buffer("membership", membership)  # (K, C)
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))
        counts = torch.tensor([float(k) for k in clusters_per_class])
        self.bias = nn.Parameter(-torch.log(counts))

    @torch.no_grad()
    def init_from(
        self, directions: torch.Tensor, classes: torch.Tensor, temperature: float
    ) -> None:
        """Prototypes from centroid ``directions`` (K, E) of ``classes`` (K,), scale 2 / T.

        The directions must come class by class in the head's order with the head's counts per
        class (the order :class:`train.losses.ClusterCentroidLoss` keeps them in).
        """
        owners = self.membership.argmax(1)
        if directions.shape != self.weight.shape or not torch.equal(classes, owners):
            raise ValueError(
                f"centroid head has prototypes per class {self.membership.sum(0).tolist()}; "
                f"got {directions.shape[0]} directions of classes {classes.tolist()}"
            )
        self.weight.copy_(F.normalize(directions, dim=1))
        self.log_scale.fill_(math.log(2.0 / temperature))
        self.bias.copy_(-torch.log(self.membership.sum(0)))

    def novelty(self, emb: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
        """How unlike every prototype of ``classes`` the embeddings (..., E) are: ``1 - max_k
        cos(z, w_k)`` over those prototypes, shape (..., 1), in [0, 2] (0 = on a prototype).

        With the event classes, this is the distance to the nearest event centroid the embedding
        stage pulled that class's examples towards: a sound the model was never taught can score
        high here even where the softmax, which must pick *some* class, is confident.
        """
        wanted = set(classes)
        owners = self.membership.argmax(1).tolist()
        keep = [k for k, owner in enumerate(owners) if owner in wanted]
        if not keep:
            raise ValueError(f"no prototypes of classes {list(classes)} in this head")
        prototypes = F.normalize(self.weight[keep], dim=-1)  # (K', E)
        cos = F.normalize(emb, dim=-1) @ prototypes.T  # (..., K')
        return 1.0 - cos.max(dim=-1, keepdim=True).values

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """Logits (..., C) of embeddings (..., E)."""
        cos = F.normalize(emb, dim=-1) @ F.normalize(self.weight, dim=-1).T  # (..., K)
        scaled = cos * self.log_scale.exp()
        top = scaled.max(dim=-1, keepdim=True).values.detach()  # for a stable log-sum-exp
        summed = torch.exp(scaled - top) @ self.membership  # (..., C)
        return torch.log(summed.clamp_min(1e-30)) + top + self.bias


def _head(config: ModelConfig) -> nn.Module:
    if config.head == "centroid":
        return CentroidHead(config.embedding_dim, config.head_clusters)
    return nn.Linear(config.embedding_dim, config.num_classes)


def probabilities(logits: torch.Tensor, output: str) -> torch.Tensor:
    """Scores of ``logits`` (..., C) as the model's ``output`` defines them: a softmax over the
    classes, or an independent sigmoid per class."""
    return torch.sigmoid(logits) if output == "sigmoid" else torch.softmax(logits, dim=-1)


class FrequencyFront(nn.Module):
    """Per-frame convolutions over the mel axis: (B, T, F) -> (B, T, out_features)."""

    def __init__(self, n_mels: int, channels: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(1, channels, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(channels, channels, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
        )
        self.project = nn.Linear(channels * (n_mels // 4), out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, bands = x.shape
        y = self.conv(x.reshape(batch * frames, 1, bands))  # (B*T, ch, F/4)
        return torch.relu(self.project(y.reshape(batch, frames, -1)))


class StreamingLSTM(nn.Module):
    """Unidirectional LSTM: frames (B, T, F) -> per-frame embeddings (B, T, E) and logits (B, T, C).

    ``h`` and ``c`` have shape (num_layers, B, hidden_size); zeros when omitted.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.norm = FeatureNorm(config.n_mels)
        self.front = (
            FrequencyFront(config.n_mels, config.front_channels, config.n_mels)
            if config.front_channels
            else nn.Identity()
        )
        self.lstm = nn.LSTM(
            config.n_mels,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.project = nn.Linear(config.hidden_size, config.embedding_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = _head(config)

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero LSTM state (h, c) for ``batch`` sequences."""
        shape = (self.config.num_layers, batch, self.config.hidden_size)
        return torch.zeros(shape), torch.zeros(shape)

    def embed(
        self,
        features: torch.Tensor,
        h: torch.Tensor | None = None,
        c: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-frame embeddings (B, T, E) and the final state (h, c)."""
        if h is None or c is None:
            h, c = self.initial_state(features.shape[0])
        out, (h_out, c_out) = self.lstm(self.front(self.norm(features)), (h, c))  # (B, T, H)
        return self.project(out), h_out, c_out

    def forward(
        self,
        features: torch.Tensor,
        h: torch.Tensor | None = None,
        c: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-frame logits (B, T, C) and the final state (h, c)."""
        emb, h_out, c_out = self.embed(features, h, c)
        return self.classifier(self.dropout(emb)), h_out, c_out


class CNNClassifier(nn.Module):
    """Clip-level CNN over the (T, F) log-mel image: embeddings (B, E), logits (B, C)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.norm = FeatureNorm(config.n_mels)
        widths = (16, 32, config.hidden_size)
        layers: list[nn.Module] = []
        channels = 1
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.conv = nn.Sequential(*layers)
        self.project = nn.Linear(channels, config.embedding_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = _head(config)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Clip embeddings (B, E) from frames (B, T, F); T must be >= 8."""
        x = self.conv(self.norm(features).unsqueeze(1))  # (B, C, T/8, F/8)
        return self.project(x.mean(dim=(2, 3)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits of clip features."""
        return self.classifier(self.dropout(self.embed(features)))


Network = StreamingLSTM | CNNClassifier


def build_model(config: ModelConfig) -> Network:
    """The network that ``config.kind`` names."""
    return StreamingLSTM(config) if config.kind == "lstm" else CNNClassifier(config)
