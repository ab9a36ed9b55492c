"""Detection post-processing: per-class settings (stored in the model's metadata) and the
per-class state machine that turns frame scores into events."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from edge_detect.errors import ConfigError

__all__ = ["ClassDetection"]


@dataclass(frozen=True)
class ClassDetection:
    """How one class's frame scores become events. Defaults come from the model metadata and
    can be overridden by the user's config."""

    threshold_on: float = 0.5
    """Smoothed score at or above which an event may start, in [0, 1]."""
    threshold_off: float = 0.3
    """Smoothed score below which a running event ends (hysteresis), <= threshold_on."""
    smoothing_ms: float = 100.0
    """Length of the moving average applied to frame scores, in ms (0 = none)."""
    confirm_ms: float = 50.0
    """How long the score must stay >= threshold_on before the event is confirmed, in ms."""
    refractory_s: float = 1.0
    """After an event ends, no new event of this class starts for this long, in s."""
    enabled: bool = True
    """False: never alert for this class (e.g. 'background')."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold_off <= self.threshold_on <= 1.0:
            raise ConfigError(
                "need 0 <= threshold_off <= threshold_on <= 1, got "
                f"threshold_on={self.threshold_on}, threshold_off={self.threshold_off}"
            )
        for name in ("smoothing_ms", "confirm_ms", "refractory_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassDetection:
        if not isinstance(data, dict):
            raise ConfigError(f"detection settings must be a table, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown detection key(s) {unknown}; expected some of {sorted(known)}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "enabled":
                if not isinstance(value, bool):
                    raise ConfigError(f"detection key 'enabled' must be true/false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"detection key {key!r} must be a number, got {value!r}")
            else:
                value = float(value)
            kwargs[key] = value
        return cls(**kwargs)
