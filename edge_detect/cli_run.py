"""``edge-detect run`` (the device's main job) and ``edge-detect devices``.

``run`` reads the TOML config (``--config``), applies the flags given on the command line over
it, loads the model (the bundled default unless ``--model``), and runs the pipeline until the
input ends or SIGINT/SIGTERM arrives. Alerts go to stdout as JSON lines; logs and health go to
stderr. The helpers here (:func:`build_source`, :func:`build_pipeline`) are the one way to
assemble the runtime, also used by ``eval`` and ``bench``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_detect.audio import PCM_FORMATS
from edge_detect.clips import ClipRecorder
from edge_detect.config import RuntimeConfig, load_config, sink_builder
from edge_detect.errors import ConfigError
from edge_detect.microphone import MicrophoneSource, list_input_devices
from edge_detect.model import DEFAULT_MODEL_PATH, StreamingModel, load_model
from edge_detect.pipeline import ALERT_ON, Pipeline
from edge_detect.sinks import JsonLinesSink, Sink
from edge_detect.sources import (
    HealthCallback,
    RawPcmSource,
    Source,
    WavFileSource,
    check_device_spec,
)

__all__ = ["build_pipeline", "build_sinks", "build_source", "register"]

log = logging.getLogger(__name__)

DEMO_PATH = Path(__file__).resolve().parent / "assets" / "demo.wav"
"""The bundled demo recording (``--input demo``): a dog bark, a baby's cry and a gunshot."""

# flag -> config field; flags default to "not given" so that the config file's value stays
FLAG_FIELDS = {
    "model": "model",
    "input": "source",
    "device": "device",
    "block_ms": "block_ms",
    "realtime": "realtime",
    "rate": "rate_hz",
    "format": "format",
    "channels": "channels",
    "device_name": "device_name",
    "alert_on": "alert_on",
    "health_stdout": "health_stdout",
    "threads": "threads",
}


def config_from_args(args: argparse.Namespace) -> RuntimeConfig:
    """The config file (if any) with the flags that were given applied over it."""
    config = load_config(getattr(args, "config", None))
    changes: dict[str, Any] = {}
    for flag, field_name in FLAG_FIELDS.items():
        if hasattr(args, flag):
            changes[field_name] = getattr(args, flag)
    if "device" in changes:
        changes["device"] = check_device_spec(changes["device"])
    try:
        return config.replace(**changes)
    except ConfigError as exc:
        raise ConfigError(f"command-line flags: {exc}") from None


def build_source(
    config: RuntimeConfig, sample_rate_hz: int, on_health: HealthCallback | None = None
) -> Source:
    """The audio source that ``config.source`` names: 'mic', '-' (raw PCM stdin), 'demo' (the
    bundled demo recording) or a WAV file."""
    if config.source == "mic":
        return MicrophoneSource(
            sample_rate_hz,
            device=config.device,
            block_ms=config.block_ms,
            on_health=on_health,
            stall_timeout_s=config.stall_timeout_s,
            backoff_max_s=config.backoff_max_s,
        )
    if config.source == "demo":
        return WavFileSource(
            DEMO_PATH, sample_rate_hz, block_ms=config.block_ms, realtime=config.realtime
        )
    if config.source == "-":
        return RawPcmSource(
            sys.stdin.buffer,
            sample_rate_hz,
            input_rate_hz=config.rate_hz,
            sample_format=config.format,
            channels=config.channels,
            block_ms=config.block_ms,
        )
    return WavFileSource(
        config.source, sample_rate_hz, block_ms=config.block_ms, realtime=config.realtime
    )


def build_sinks(config: RuntimeConfig) -> list[Sink]:
    """Every configured ``[sinks.<kind>]`` and stdout JSON lines (unless disabled).

    The metrics come first: the pipeline hands each message to the sinks in order, so an alert
    is counted before any output shows it (a scrape that follows an alert on stdout sees it
    counted; issue 15 item 13).
    """
    sinks: list[Sink] = []
    if "metrics" in config.sinks:
        sinks.append(sink_builder("metrics")(config.sinks["metrics"], config))
    if config.stdout:
        sinks.append(JsonLinesSink(health=config.health_stdout))
    for kind, table in config.sinks.items():
        if kind != "metrics":
            sinks.append(sink_builder(kind)(table, config))
    return sinks


def build_pipeline(
    config: RuntimeConfig,
    model: StreamingModel,
    sinks: list[Sink],
    *,
    record_clips: bool = False,
    **kwargs: Any,
) -> Pipeline:
    """The pipeline for ``model`` with the config's detection overrides and state policy;
    ``record_clips`` adds the config's clip recorder (``run`` does, ``eval``/``bench`` do not)."""
    if record_clips and config.clips_dir is not None:
        kwargs["clips"] = ClipRecorder(
            config.clips_dir,
            model.feature_config.sample_rate_hz,
            pre_roll_s=config.clips_pre_roll_s,
            post_roll_s=config.clips_post_roll_s,
            max_clips=config.clips_max_count,
            max_bytes=round(config.clips_max_mb * 1024 * 1024),
        )
    return Pipeline(
        model,
        sinks,
        detection=config.detection_for(model.detection),
        device_name=config.device_name,
        alert_on=config.alert_on,
        state_policy=config.state,
        heartbeat_s=config.heartbeat_s,
        **kwargs,
    )


@contextmanager
def stop_on_signals(pipeline: Pipeline, source: Source) -> Iterator[None]:
    """SIGINT/SIGTERM: finish the block in progress, close events, send 'stopping', exit 0."""

    def handler(signum: int, frame: Any) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        pipeline.stop()
        source.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_command(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    config = config_from_args(args)
    model = load_model(config.model, threads=config.threads)
    log.info("model %s, classes %s", model.model_id, ", ".join(model.labels))
    sinks = build_sinks(config)
    pipeline = build_pipeline(config, model, sinks, record_clips=True)
    source = build_source(config, model.feature_config.sample_rate_hz, pipeline.health)
    if "metrics" in config.sinks:  # the metrics endpoint also times blocks and reads overflows
        from edge_detect.metrics import instrument

        reporters = [] if pipeline.clips is None else [pipeline.clips]
        source = instrument(sinks, source, model.labels, reporters)
    if getattr(args, "show", False):  # drawn on stderr: stdout keeps only the alerts
        from edge_detect.live import LiveView

        source = LiveView(pipeline, sys.stderr).watch(source)
    with stop_on_signals(pipeline, source):
        log.info(
            "start-up took %.0f ms; reading %s", 1e3 * (time.perf_counter() - started), source.name
        )
        stats = pipeline.run(source)
    busy = stats.busy_s
    log.info(
        "done: %.1f s of audio in %d blocks, %d alert(s), %d state re-sync(s); "
        "processing %.2f ms per block",
        stats.audio_s,
        stats.blocks,
        stats.alerts,
        stats.resyncs,
        1e3 * busy / max(1, stats.blocks),
    )
    return 0


def devices_command(args: argparse.Namespace) -> int:
    devices = list_input_devices()
    if not devices:
        print("no input devices found", file=sys.stderr)
        return 1
    print(f"{'index':>5}  {'default':7}  {'rate':>6}  {'ch':>3}  {'host API':12}  name")
    for d in devices:
        mark = "*" if d["default"] else ""
        print(
            f"{d['index']:>5}  {mark:7}  {d['default_rate_hz']:>6}  {d['channels']:>3}  "
            f"{d['hostapi'][:12]:12}  {d['name']}"
        )
    return 0


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        help=f"the .onnx model (default: the bundled {DEFAULT_MODEL_PATH.name})",
    )


def register(subparsers: argparse._SubParsersAction, formatter: Any) -> None:
    """Add ``edge-detect run`` and ``edge-detect devices`` to the CLI's subcommands."""
    run = subparsers.add_parser(
        "run",
        help="detect events from a microphone, a WAV file or raw PCM on stdin",
        description=(
            "Detect events and print one JSON line per alert on stdout (logs on stderr).\n"
            "Flags override the config file; the config file overrides the defaults shown.\n"
            "Examples:\n"
            "  edge-detect run                        # default microphone, bundled model\n"
            "  edge-detect run --input demo           # the bundled demo recording\n"
            "  edge-detect run --input recording.wav\n"
            "  arecord -q -f S16_LE -r 48000 -c 1 -t raw | edge-detect run --input - --rate 48000"
        ),
        formatter_class=formatter,
    )
    S = argparse.SUPPRESS
    D = RuntimeConfig()  # the defaults shown in --help are the real ones
    run.add_argument(
        "--config", metavar="TOML", help="runtime config file (deploy/edge-detect.toml)"
    )
    add_model_argument(run)
    run.add_argument(
        "--input",
        default=S,
        metavar="mic|FILE.wav|-|demo",
        help=f"'mic', a WAV file, '-' for raw PCM on stdin, or 'demo' for the bundled demo "
        f"recording (default: {D.source})",
    )
    run.add_argument(
        "--device",
        default=S,
        help="microphone index or part of its name; waits for a missing one (default: the default)",
    )
    run.add_argument(
        "--block-ms",
        dest="block_ms",
        type=float,
        default=S,
        help=f"audio per block in ms (default: {D.block_ms:g})",
    )
    run.add_argument(
        "--realtime",
        action="store_true",
        default=S,
        help="WAV input: pace it like a microphone (default: as fast as possible)",
    )
    run.add_argument(
        "--rate",
        type=int,
        default=S,
        help=f"stdin: sample rate of the raw PCM in Hz (default: {D.rate_hz})",
    )
    run.add_argument(
        "--format",
        choices=sorted(PCM_FORMATS),
        default=S,
        help=f"stdin: sample format (default: {D.format})",
    )
    run.add_argument(
        "--channels", type=int, default=S, help=f"stdin: channels (default: {D.channels})"
    )
    run.add_argument(
        "--device-name",
        dest="device_name",
        default=S,
        help="name of this detector in alerts (default: the host name)",
    )
    run.add_argument(
        "--alert-on",
        dest="alert_on",
        choices=ALERT_ON,
        default=S,
        help=f"alert when an event is confirmed or when it ends (default: {D.alert_on})",
    )
    run.add_argument(
        "--health-stdout",
        dest="health_stdout",
        action="store_true",
        default=S,
        help="also print health events (started, microphone_lost, ...) on stdout",
    )
    run.add_argument(
        "--threads", type=int, default=S, help=f"ONNX Runtime threads (default: {D.threads})"
    )
    run.add_argument(
        "--show",
        action="store_true",
        help="live view on stderr: input level, each class's score against its thresholds, "
        "recent alerts (plain lines once a second when stderr is not a terminal)",
    )
    run.set_defaults(func=run_command)

    devices = subparsers.add_parser(
        "devices", help="list the audio input devices", formatter_class=formatter
    )
    devices.set_defaults(func=devices_command)
