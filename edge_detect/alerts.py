"""Alerts and health events: what the detector tells the world, one versioned JSON line each.

The JSON has sorted keys and no spaces, so its bytes are stable (tests pin them).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ALERT_SCHEMA_VERSION", "Alert", "HealthEvent"]

ALERT_SCHEMA_VERSION = 1
"""Version of the alert and health-event JSON; bumped on any incompatible change."""


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Alert:
    """One detected event of one class."""

    id: str
    """Unique id (UUID4 hex); stable across deliveries, so receivers can de-duplicate."""
    seq: int
    """Per-process sequence number, from 1."""
    label: str
    """Class name, e.g. 'dog_bark'. Serialised as ``class``."""
    score: float
    """Peak (smoothed) score during the event, in [0, 1]."""
    start: str
    """Wall-clock time of the event's start, ISO 8601 with time zone."""
    end: str
    """Wall-clock time of the event's end (or of the alert, if the event is still going on)."""
    duration_s: float
    """end - start, in seconds."""
    device: str
    """Name of the detector device (host name unless configured)."""
    model_id: str
    """Identifier of the model that made the decision."""
    clip: str | None = None
    """Path of the saved audio clip around the event, when clips are enabled."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Additional fields (kept out of the stable core)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: fields by name, ``label`` as ``class``, ``extra`` merged in, ``clip``
        only when set, then ``type`` and ``v``."""
        data = dataclasses.asdict(self)
        data["class"] = data.pop("label")
        extra = data.pop("extra")
        if data["clip"] is None:
            data.pop("clip")
        data.update(extra)
        data["type"] = "alert"
        data["v"] = ALERT_SCHEMA_VERSION
        return data

    def to_json(self) -> str:
        """One JSON line (no trailing newline)."""
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        """Read an alert back from :meth:`to_dict`'s form; unknown fields go to ``extra``.
        ``ValueError`` for another type or schema version."""
        data = dict(data)
        if data.pop("type", "alert") != "alert" or data.pop("v", None) != ALERT_SCHEMA_VERSION:
            raise ValueError(f"not a version-{ALERT_SCHEMA_VERSION} alert: {data!r}")
        data["label"] = data.pop("class")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: data.pop(k) for k in list(data) if k not in known}
        return cls(**data, extra=extra)


@dataclass(frozen=True)
class HealthEvent:
    """A change of the detector's health: started, stopping, microphone lost/restored, heartbeat."""

    id: str
    seq: int
    event: str
    """One of 'started', 'stopping', 'microphone_lost', 'microphone_restored', 'heartbeat',
    'overflow'."""
    time: str
    """Wall-clock time, ISO 8601 with time zone."""
    device: str
    detail: str = ""
    """Human-readable detail (never secrets)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the fields by name, then ``type`` (``health``) and ``v``."""
        data = dataclasses.asdict(self)
        data["type"] = "health"
        data["v"] = ALERT_SCHEMA_VERSION
        return data

    def to_json(self) -> str:
        """One JSON line (no trailing newline)."""
        return _dumps(self.to_dict())
