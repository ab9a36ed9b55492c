"""The detector's runtime configuration: a TOML file, overridable by command-line flags.

Every key is checked when the file is read; a wrong key, type or value raises
:class:`~edge_detect.errors.ConfigError` naming the file, the key, what was expected and what
arrived. ``deploy/edge-detect.toml`` is a commented example of every key. Layout::

    model = ""                 # top level: model, device_name, threads
    [input]                    # source, device, block_ms, realtime, rate_hz, format, channels, ...
    [detection]                # alert_on; [detection.<class>] overrides the model's settings
    [state]                    # the recurrent-state policy (edge_detect.pipeline.StatePolicy)
    [sinks]                    # stdout, health_stdout, heartbeat_s; [sinks.<kind>] outputs
    [clips]                    # audio around alerts: directory, pre/post roll, retention

Other outputs (webhooks, MQTT, ...) register a builder in :data:`SINK_BUILDERS`; a
``[sinks.<kind>]`` table is handed to it unchanged, and the builder validates it.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_detect.audio import PCM_FORMATS, check_rate
from edge_detect.detect import ClassDetection
from edge_detect.errors import ConfigError, EdgeDetectError
from edge_detect.pipeline import ALERT_ON, MAX_HEARTBEAT_S, StatePolicy
from edge_detect.sinks import Sink
from edge_detect.sources import MAX_BLOCK_MS, MIN_BLOCK_MS, check_device_spec
from edge_detect.strict import (
    check_fields,
    check_path,
    refuse_unknown,
    setting,
    shown,
    strict_from_dict,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "BUILTIN_SINKS",
    "SINK_BUILDERS",
    "RuntimeConfig",
    "config_from_dict",
    "load_config",
    "sink_builder",
]

SinkBuilder = Callable[[Mapping[str, Any], "RuntimeConfig"], Sink]
SINK_BUILDERS: dict[str, SinkBuilder] = {}
"""Builders of the outputs configured by ``[sinks.<kind>]`` tables, by kind (added at run time)."""
BUILTIN_SINKS: dict[str, tuple[str, str]] = {
    "webhook": ("edge_detect.webhook", "webhook_sink_from_settings"),
    "metrics": ("edge_detect.metrics", "build_metrics_sink"),
    "mqtt": ("edge_detect.mqtt", "mqtt_sink_from_settings"),
}
"""The package's own outputs: kind -> (module, builder), imported only when configured."""


def sink_builder(kind: str) -> SinkBuilder:
    """The builder of ``[sinks.<kind>]``; ConfigError when there is none."""
    if kind in SINK_BUILDERS:
        return SINK_BUILDERS[kind]
    if kind in BUILTIN_SINKS:
        module_name, function = BUILTIN_SINKS[kind]
        try:
            builder: SinkBuilder = getattr(importlib.import_module(module_name), function)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"[sinks.{kind}] is not available in this install: {exc}") from None
        return builder
    raise ConfigError(
        f"[sinks.{kind}] is not a known output; known: {sorted({*SINK_BUILDERS, *BUILTIN_SINKS})}"
    )


INPUT_KEYS = (
    "source",
    "device",
    "block_ms",
    "realtime",
    "rate_hz",
    "format",
    "channels",
    "stall_timeout_s",
    "backoff_max_s",
)
CLIP_KEYS = ("directory", "pre_roll_s", "post_roll_s", "max_count", "max_mb")
MAX_CHANNELS = 64
"""Most interleaved channels of raw input (a typo beyond that would allocate huge frames)."""


@dataclass(frozen=True)
class RuntimeConfig:
    """Everything ``edge-detect run`` needs besides the model's own metadata."""

    model: str | None = None
    """Path of the .onnx model; None = the bundled default model."""
    device_name: str | None = None
    """Name of this detector in alerts; None = the host name."""
    threads: int = setting(1, kind=int, low=1, high=64)
    """ONNX Runtime threads (1 suits a Raspberry Pi: audio and model do not fight over cores)."""
    source: str = "mic"
    """'mic', a WAV file path, '-' for raw PCM on stdin, or 'demo' (the bundled recording)."""
    device: int | str | None = None
    """Microphone: index or part of the name (``edge-detect devices``); None = the default."""
    block_ms: float = setting(100.0, low=MIN_BLOCK_MS, high=MAX_BLOCK_MS, key="input.block_ms")
    """Audio per block, in ms (the processing and latency granularity)."""
    realtime: bool = setting(False, kind=bool, key="input.realtime")
    """WAV input: deliver the file at the pace of a microphone instead of as fast as possible."""
    rate_hz: int = 16_000
    """Raw PCM on stdin: its sample rate, in Hz (resampled to the model's)."""
    format: str = "s16le"
    """Raw PCM on stdin: sample format (s16le, s32le or f32le)."""
    channels: int = setting(1, kind=int, low=1, high=MAX_CHANNELS, key="input.channels")
    """Raw PCM on stdin: interleaved channels (averaged to mono)."""
    stall_timeout_s: float = setting(3.0, low=0.5, high=3600.0, key="input.stall_timeout_s")
    """Microphone: no audio for this long counts as a lost device, in s."""
    backoff_max_s: float = setting(10.0, low=0.1, high=3600.0, key="input.backoff_max_s")
    """Microphone: longest wait between reopen attempts, in s."""
    alert_on: str = "onset"
    """'onset' (alert when the event is confirmed) or 'end' (alert with the full duration)."""
    detection: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-class overrides of the model's detection settings (only the keys given)."""
    state: StatePolicy = field(default_factory=StatePolicy)
    stdout: bool = setting(True, kind=bool, key="sinks.stdout")
    """Write alerts as JSON lines on stdout."""
    health_stdout: bool = setting(False, kind=bool, key="sinks.health_stdout")
    """Also write health events on stdout (they always go to the log on stderr)."""
    heartbeat_s: float = setting(0.0, low=0.0, high=MAX_HEARTBEAT_S, key="sinks.heartbeat_s")
    """Send a 'heartbeat' health event to every output this often, in s of audio (0 = never)."""
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Other outputs, ``{kind: table}``, built by :data:`SINK_BUILDERS`."""
    clips_dir: str | None = None
    """Folder for the audio clips around alerts (``[clips] directory``); None = no clips."""
    clips_pre_roll_s: float = setting(5.0, low=0.0, high=600.0, key="clips.pre_roll_s")
    """Audio kept before the alert, in s."""
    clips_post_roll_s: float = setting(5.0, low=0.0, high=600.0, key="clips.post_roll_s")
    """Audio collected after the alert, in s."""
    clips_max_count: int = setting(200, kind=int, low=0, high=1_000_000, key="clips.max_count")
    """Most clips kept in the folder (oldest deleted first); 0 = no limit."""
    clips_max_mb: float = setting(200.0, low=0.0, high=1_000_000.0, key="clips.max_mb")
    """Most megabytes of clips kept (oldest deleted first); 0 = no limit."""

    def __post_init__(self) -> None:
        _check(self)

    def replace(self, **changes: Any) -> RuntimeConfig:
        """A copy with ``changes`` applied (e.g. command-line flags), validated again."""
        return dataclasses.replace(self, **changes)

    def detection_for(self, defaults: Mapping[str, ClassDetection]) -> dict[str, ClassDetection]:
        """The model's per-class settings with this config's overrides applied."""
        unknown = sorted(set(self.detection) - set(defaults))
        if unknown:
            raise ConfigError(
                f"[detection] has settings for class(es) {unknown} that the model does not know; "
                f"its classes are {sorted(defaults)}"
            )
        out = dict(defaults)
        for label, override in self.detection.items():
            merged = {**defaults[label].to_dict(), **override}
            out[label] = ClassDetection.from_dict(
                merged, where=f"[detection.{label}] with the model's defaults"
            )
        return out


def _fail(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"config key {key!r}: expected {expected}, got {shown(value)}")


def _check(c: RuntimeConfig) -> None:
    check_fields(c)  # every number finite and in range, booleans true/false
    for key in ("model", "device_name"):
        value = getattr(c, key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise _fail(key, "a non-empty string (or leave it out)", value)
    if c.model is not None:
        check_path(c.model, "model")
    if not isinstance(c.source, str) or not c.source:
        raise _fail("input.source", "'mic', a WAV file path or '-' (stdin)", c.source)
    check_path(c.source, "input.source")
    check_device_spec(c.device)
    try:
        check_rate(c.rate_hz, "input.rate_hz")
    except EdgeDetectError as exc:
        raise ConfigError(f"config key 'input.rate_hz': {exc}") from None
    if not isinstance(c.format, str) or c.format not in PCM_FORMATS:
        raise _fail("input.format", f"one of {sorted(PCM_FORMATS)}", c.format)
    if c.alert_on not in ALERT_ON:
        raise _fail("detection.alert_on", f"one of {list(ALERT_ON)}", c.alert_on)
    for label, table in c.detection.items():
        # validate keys and types now (thresholds are checked again against the model's values)
        try:
            ClassDetection.from_dict(
                {**ClassDetection().to_dict(), **table}, f"[detection.{label}]"
            )
        except ConfigError as exc:
            if "need 0 <= threshold_off" not in str(exc):
                raise
    if c.clips_dir is not None and (not isinstance(c.clips_dir, str) or not c.clips_dir.strip()):
        raise _fail("clips.directory", "a folder path (or leave it out for no clips)", c.clips_dir)
    if c.clips_dir is not None:
        check_path(c.clips_dir, "clips.directory")
    for kind in c.sinks:
        if kind not in SINK_BUILDERS and kind not in BUILTIN_SINKS:
            sink_builder(kind)  # raises the message listing the known outputs


def _table(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table, got {value!r}")
    return dict(value)


def config_from_dict(data: Mapping[str, Any], where: str = "config") -> RuntimeConfig:
    """Build a :class:`RuntimeConfig` from parsed TOML, refusing unknown keys."""
    refuse_unknown(
        data,
        ("model", "device_name", "threads", "input", "detection", "state", "sinks", "clips"),
        where,
    )
    kwargs: dict[str, Any] = {k: data[k] for k in ("model", "device_name", "threads") if k in data}
    for key in ("model", "device_name"):
        if kwargs.get(key) == "":
            kwargs[key] = None  # "" in the file means "the default"
    inputs = _table(data, "input", where)
    refuse_unknown(inputs, INPUT_KEYS, f"{where} [input]")
    kwargs.update(inputs)
    if "device" in kwargs:
        kwargs["device"] = check_device_spec(kwargs["device"])
    detection = _table(data, "detection", where)
    if "alert_on" in detection:
        kwargs["alert_on"] = detection.pop("alert_on")
    for label, table in detection.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [detection.{label}] must be a table, got {table!r}")
    kwargs["detection"] = detection
    state = _table(data, "state", where)
    kwargs["state"] = strict_from_dict(StatePolicy, state, where=f"{where} [state]")
    sinks = _table(data, "sinks", where)
    for key in ("stdout", "health_stdout", "heartbeat_s"):
        if key in sinks:
            kwargs[key] = sinks.pop(key)
    for kind, table in sinks.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [sinks.{kind}] must be a table, got {table!r}")
    kwargs["sinks"] = sinks
    clips = _table(data, "clips", where)
    refuse_unknown(clips, CLIP_KEYS, f"{where} [clips]")
    for key, value in clips.items():
        kwargs[f"clips_{key}" if key != "directory" else "clips_dir"] = value
    if kwargs.get("clips_dir") == "":
        kwargs["clips_dir"] = None
    try:
        return RuntimeConfig(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_config(path: str | Path | None) -> RuntimeConfig:
    """Read a TOML config file; None gives the defaults."""
    if path is None:
        return RuntimeConfig()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); TOML files are UTF-8: save it as UTF-8, e.g. iconv -t UTF-8"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return config_from_dict(data, str(path))
