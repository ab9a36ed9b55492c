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
    """Wall-clock time of the event's start, ISO 8601 with time zone: when the detector heard
    it. Never in the future: for a file read faster than real time it is close to when the
    file was processed, and ``offset_s`` (in the JSON) says where in the file the event starts,
    in seconds from the file's (or stream's) start."""
    end: str
    """Wall-clock time of the event's end, or, with ``alert_on = "onset"`` (the default), of
    the frame that confirmed it: the event is still going on when that alert is sent."""
    duration_s: float
    """``end - start`` in seconds. With ``alert_on = "onset"`` this is how long it took to
    confirm the event (about the smoothing plus the confirmation time, e.g. 0.065 s), **not**
    the event's length, which is not known yet; with ``alert_on = "end"`` it is the length of
    the whole event."""
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
    """What happened. Routine: 'started', 'stopping', 'heartbeat', 'microphone_restored'.
    Something to look at: 'microphone_lost', 'overflow' (audio or messages dropped),
    'model_output_invalid' (NaN/inf scores counted as silence), 'thread_restarted' (a
    background thread failed and was restarted), 'outbox_replaced' (a corrupt outbox moved
    aside), 'outbox_unwritable' / 'outbox_writable' (a full disk: messages wait in memory),
    'clips_unwritable' / 'clips_writable', 'endpoint_disabled' / 'endpoint_enabled' (a webhook
    endpoint answered 410 Gone / was enabled again), 'mqtt_disconnected' / 'mqtt_connected'."""
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
