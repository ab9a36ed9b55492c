"""The public API, pinned in the manner of httpx's ``test_exported_members``: the package's
namespace is exactly its ``__all__``, and every module's ``__all__`` is exactly the set written
here. Adding or removing a public name is a decision, so it shows up as a change to this file.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import textwrap
import types

import pytest

import edge_detect

TOP_LEVEL = {
    # the objects of a detector: load a model, run a pipeline, receive alerts
    "load_model", "StreamingModel", "Pipeline", "Alert", "HealthEvent",
    # audio and the front end
    "Audio", "StreamingResampler", "read_wav", "write_wav", "resample", "to_mono",
    "FeatureConfig", "StreamingLogMel", "log_mel",
    # the error tree (edge_detect.errors documents it)
    "EdgeDetectError", "AudioError", "AudioDeviceError", "SampleRateError", "ConfigError",
    "ModelError", "CheckpointError", "DatasetError", "TrainingError", "MissingExtraError",
    "__version__",
}  # fmt: skip

MODULES = {
    "alerts": {"ALERT_SCHEMA_VERSION", "Alert", "HealthEvent"},
    "audio": {
        "Audio",
        "COMMON_RATES_HZ",
        "PCM_FORMATS",
        "StreamingResampler",
        "WavReader",
        "finite_samples",
        "pcm_to_float",
        "read_wav",
        "resample",
        "to_mono",
        "write_wav",
    },
    "calibrate": {
        "format_calibration_table",
        "register",
        "write_calibrated_model",
        "write_metadata",
    },
    "cli": {"main"},
    "cli_bench": {"register"},
    "cli_clips": {"SavedClip", "copy_false_alarms", "find_clips", "register", "select_clips"},
    "cli_eval": {
        "add_stream_arguments",
        "check_stream_args",
        "format_stream_table",
        "format_table",
        "plot_curves",
        "register",
        "streams_from_args",
    },
    "cli_run": {"build_pipeline", "build_sinks", "build_source", "register"},
    "cli_webhook": {"enable_endpoint", "endpoint_states", "find_outbox", "register"},
    "clips": {"CLIP_STAMP_FORMAT", "CLIP_SUFFIX", "ClipRecorder"},
    "config": {
        "BUILTIN_SINKS",
        "RuntimeConfig",
        "SINK_BUILDERS",
        "config_from_dict",
        "load_config",
        "sink_builder",
    },
    "credentials": {"MAX_SECRET_FILE_BYTES", "read_secret", "secret_keys"},
    "detect": {"ClassDetection", "ClassDetector", "Detector", "Event"},
    "errors": {
        "AudioDeviceError",
        "AudioError",
        "CheckpointError",
        "ConfigError",
        "DatasetError",
        "EdgeDetectError",
        "MissingExtraError",
        "ModelError",
        "SampleRateError",
        "TrainingError",
    },
    "evaluation": {"ClassCounts", "Event", "EventBasedMetrics"},
    "features": {"FeatureConfig", "StreamingLogMel", "log_mel", "mel_filterbank"},
    "live": {"LiveView", "format_view", "level_dbfs"},
    "metrics": {
        "DEFAULT_LISTEN",
        "DetectorMetrics",
        "MetricsServer",
        "MetricsSink",
        "Registry",
        "Sample",
        "build_metrics_sink",
        "instrument",
        "parse_listen",
        "parse_metrics",
    },
    "microphone": {"MicrophoneSource", "PortAudioThread", "list_input_devices"},
    "model": {
        "DEFAULT_MODEL_PATH",
        "INPUT_NAMES",
        "LSTMState",
        "METADATA_KEYS",
        "NOVELTY_OUTPUT",
        "OUTPUT_NAMES",
        "SCHEMA_VERSION",
        "StreamingModel",
        "load_model",
        "score_problem",
    },
    "mqtt": {"MqttSink", "mqtt_sink_from_settings", "node_id"},
    "operating": {
        "CALIBRATION_KEY",
        "CONFIRM_MS_GRID",
        "CURVE_THRESHOLDS",
        "ClassCalibration",
        "FA_TARGETS_PER_HOUR",
        "ONSET_COLLAR_S",
        "OperatingPoint",
        "SMOOTHING_MS_GRID",
        "ScoredStreams",
        "THRESHOLD_BISECTIONS",
        "calibrate",
        "calibrate_class",
        "calibration_record",
        "detected_by",
        "file_sha256",
        "lowest_threshold",
        "miss_rate_at_false_alarms",
        "model_calibration",
        "operating_curves",
        "operating_point",
        "replay_events",
        "replay_onsets",
        "warn_if_calibrated_on",
        "with_threshold",
    },
    "outbox": {"DEFAULT_MAX_DEAD", "DEFAULT_MAX_MEMORY", "DEFAULT_MAX_PENDING", "Outbox"},
    "outbox_file": {
        "DeadLetter",
        "Kept",
        "OUTBOX_SCHEMA_VERSION",
        "Record",
        "StorageEvent",
        "connect",
        "is_corruption",
        "is_storage_fault",
        "lock_outbox",
        "move_aside",
        "salvage",
    },
    "pipeline": {"ALERT_ON", "Pipeline", "RunStats", "StatePolicy", "iso_time"},
    "progress": {"Progress", "progress", "with_progress"},
    "provenance": {
        "REPORTED_PACKAGES",
        "checkout_root",
        "git_state",
        "provenance",
        "relative_paths",
    },
    "scoring": {
        "ClipResult",
        "alert_events",
        "evaluate_clips",
        "evaluate_streams",
        "false_alarms_by_source",
        "run_stream",
        "score_streams",
    },
    "sinks": {"Figure", "JsonLinesSink", "Output", "Reporter", "Sink"},
    "sources": {
        "Block",
        "HealthCallback",
        "RawPcmSource",
        "Source",
        "WavFileSource",
        "block_samples",
        "check_device_spec",
    },
    "status_cli": {"fetch_metrics", "format_status", "health", "metrics_url", "register"},
    "streams": {
        "ACTIVE_FRAME_MS",
        "ACTIVE_RANGE_DB",
        "BACKGROUND",
        "LabeledClip",
        "ManifestRow",
        "TestStream",
        "active_span",
        "build_streams",
        "event_free_stream",
        "event_stream",
        "load_clip",
        "read_audio",
        "read_manifest",
        "read_manifests",
        "rms_db",
    },
    "strict": {
        "check_bool",
        "check_field",
        "check_fields",
        "check_integer",
        "check_number",
        "check_path",
        "check_string",
        "make_folder",
        "refuse_unknown",
        "setting",
        "shown",
        "strict_from_dict",
        "table",
    },
    "supervise": {"HealthReporter", "Supervised"},
    "throttle": {"ThrottlePolicy", "ThrottledSink", "describe_duration", "throttle_from_settings"},
    "webhook": {
        "Clock",
        "EndpointStats",
        "ScaledClock",
        "SystemClock",
        "WebhookSink",
        "default_outbox_path",
        "webhook_sink_from_settings",
    },
    "webhook_endpoint": {
        "Backoff",
        "SECRET_PREFIX",
        "Secret",
        "WebhookEndpoint",
        "redact_url",
        "webhook_endpoint_from_settings",
    },
    "webhook_http": {"MAX_RESPONSE_BYTES", "Outcome", "post", "printable", "retry_after_s"},
}
"""Each module's intended public surface (its ``__all__``)."""

FOUND = sorted(m.name for m in pkgutil.iter_modules(edge_detect.__path__) if m.name != "__main__")


def test_the_package_namespace_is_exactly_its_all() -> None:
    public = {
        name
        for name, value in vars(edge_detect).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public | {"__version__"} == set(edge_detect.__all__)
    assert set(edge_detect.__all__) == TOP_LEVEL
    assert len(edge_detect.__all__) == len(set(edge_detect.__all__))


def test_every_module_has_a_pinned_surface() -> None:
    assert FOUND == sorted(MODULES), "a module was added or removed: pin its __all__ here"


@pytest.mark.parametrize("name", FOUND)
def test_module_exports_are_the_intended_set(name: str) -> None:
    module = importlib.import_module(f"edge_detect.{name}")
    exported = module.__all__
    assert len(exported) == len(set(exported)), f"{name}.__all__ lists a name twice"
    assert set(exported) == MODULES[name]
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists missing names {missing}"
    # a module exports what it defines; the package alone re-exports
    borrowed = [
        n
        for n in exported
        if (inspect.isclass(obj := getattr(module, n)) or inspect.isfunction(obj))
        and obj.__module__ != module.__name__
    ]
    assert not borrowed, f"{name} re-exports {borrowed}"


def test_the_docstring_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The package docstring's minimal detector, as written there, on the bundled demo."""
    source = inspect.getdoc(edge_detect) or ""
    example = textwrap.dedent(source.split("::", 1)[1])
    demo = str(edge_detect.__path__[0]) + "/assets/demo.wav"
    exec(example.replace('"clip.wav"', repr(demo)), {})  # noqa: S102 - our own docstring
    lines = capsys.readouterr().out.splitlines()
    assert lines and all('"type":"alert"' in line for line in lines)
