"""The networks: a small streaming LSTM (the deployed model) and a CNN (for comparison).

Both map log-mel frames to an embedding and, through a linear classifier head, to class logits.
The LSTM is unidirectional and runs frame by frame with carried state ``(h, c)``, so the same
weights serve clip training and the endless stream on the device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edge_detect.errors import ConfigError

__all__ = ["CNNClassifier", "ModelConfig", "Network", "StreamingLSTM", "build_model"]


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

    def __post_init__(self) -> None:
        if self.kind not in ("lstm", "cnn"):
            raise ConfigError(f"model kind must be 'lstm' or 'cnn', got {self.kind!r}")
        for name in ("n_mels", "num_classes", "hidden_size", "num_layers", "embedding_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"model {name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
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


class StreamingLSTM(nn.Module):
    """Unidirectional LSTM: frames (B, T, F) -> per-frame embeddings (B, T, E) and logits (B, T, C).

    ``h`` and ``c`` have shape (num_layers, B, hidden_size); zeros when omitted.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.norm = FeatureNorm(config.n_mels)
        self.lstm = nn.LSTM(
            config.n_mels,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.project = nn.Linear(config.hidden_size, config.embedding_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.embedding_dim, config.num_classes)

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
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
        out, (h_out, c_out) = self.lstm(self.norm(features), (h, c))  # (B, T, H)
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
        self.classifier = nn.Linear(config.embedding_dim, config.num_classes)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Clip embeddings (B, E) from frames (B, T, F); T must be >= 8."""
        x = self.conv(self.norm(features).unsqueeze(1))  # (B, C, T/8, F/8)
        return self.project(x.mean(dim=(2, 3)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(features)))


Network = StreamingLSTM | CNNClassifier


def build_model(config: ModelConfig) -> Network:
    """The network that ``config.kind`` names."""
    return StreamingLSTM(config) if config.kind == "lstm" else CNNClassifier(config)
