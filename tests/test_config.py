"""Runtime configuration: TOML file, flags over it, every value validated with a clear message."""

from __future__ import annotations

import pytest
from conftest import ROOT

from edge_detect.config import RuntimeConfig, config_from_dict, load_config
from edge_detect.detect import ClassDetection
from edge_detect.errors import ConfigError
from edge_detect.pipeline import StatePolicy

EXAMPLE = ROOT / "deploy" / "edge-detect.toml"
NAN, INF = float("nan"), float("inf")


def test_defaults_and_a_full_file(tmp_path):
    assert load_config(None) == RuntimeConfig()
    path = tmp_path / "c.toml"
    path.write_text(
        """
model = "/opt/m.onnx"
device_name = "porch"
[input]
source = "mic"
device = "USB"
block_ms = 50
[detection]
alert_on = "end"
[detection.dog_bark]
threshold_on = 0.7
[state]
quiet_s = 3.0
[sinks]
health_stdout = true
"""
    )
    config = load_config(path)
    assert (config.model, config.device_name, config.device, config.block_ms) == (
        "/opt/m.onnx",
        "porch",
        "USB",
        50,
    )
    assert config.alert_on == "end" and config.health_stdout is True
    assert config.state == StatePolicy(quiet_s=3.0)
    merged = config.detection_for({"dog_bark": ClassDetection(threshold_off=0.4)})
    assert merged["dog_bark"] == ClassDetection(threshold_on=0.7, threshold_off=0.4)


def test_example_config_in_deploy_is_valid():
    config = load_config(EXAMPLE)
    assert config.source == "mic" and config.block_ms == 100


def test_device_index_given_as_number_or_digits():
    assert config_from_dict({"input": {"device": 2}}).device == 2
    assert config_from_dict({"input": {"device": "3"}}).device == 3
    assert config_from_dict({"input": {"device": ""}}).device is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"modle": "x"}, r"unknown key\(s\) \['modle'\]"),
        ({"input": {"block_ms": 0.1}}, r"input.block_ms must be .* between 5 and 2000; got 0.1"),
        ({"input": {"block_ms": "100"}}, r"input.block_ms must be a finite number .*; got '100'"),
        ({"input": {"rate_hz": 1000}}, r"input.rate_hz.*not supported"),
        ({"input": {"format": "mp3"}}, r"'input.format': expected one of"),
        ({"input": {"channels": 0}}, r"input.channels must be a whole number .*; got 0"),
        ({"input": {"realtime": "yes"}}, r"input.realtime must be true or false; got 'yes'"),
        ({"input": {"device": -1}}, r"device index must be >= 0"),
        ({"input": {"bogus": 1}}, r"\[input\]: unknown key"),
        ({"detection": {"alert_on": "never"}}, r"alert_on.*one of \['onset', 'end'\]"),
        ({"detection": {"dog_bark": {"thresh": 1}}}, r"\[detection.dog_bark\]: unknown key"),
        ({"detection": {"dog_bark": {"confirm_ms": "x"}}}, r"\]: confirm_ms must be a finite"),
        ({"detection": {"dog_bark": 0.5}}, r"\[detection.dog_bark\] must be a table"),
        ({"state": {"quiet_s": -1}}, r"test.toml \[state\]: quiet_s must be .*86400; got -1"),
        ({"state": {"every": 1}}, r"\[state\]: unknown key"),
        ({"sinks": {"pager": {}}}, r"\[sinks.pager\] is not a known output"),
        ({"sinks": {"stdout": 1}}, r"sinks.stdout must be true or false; got 1"),
        ({"threads": 0}, r"threads must be a whole number between 1 and 64; got 0"),
        ({"sinks": {"heartbeat_s": -1}}, r"sinks.heartbeat_s must be .* 604800; got -1"),
        ({"model": 3}, r"'model': expected a non-empty string"),
        # issue 15 item 8: non-finite numbers raised tracebacks or were silently accepted
        ({"detection": {"dog_bark": {"confirm_ms": INF}}}, r"confirm_ms must be a finite number"),
        ({"clips": {"max_mb": NAN}}, r"test.toml: clips.max_mb must be a finite number.*got nan"),
        ({"sinks": {"heartbeat_s": NAN}}, r"sinks.heartbeat_s must be a finite number"),
        ({"state": {"quiet_s": NAN}}, r"\[state\]: quiet_s must be a finite number"),
        ({"input": {"stall_timeout_s": NAN}}, r"input.stall_timeout_s must be a finite number"),
        ({"input": {"backoff_max_s": 1e308}}, r"input.backoff_max_s must be a finite number"),
        ({"input": {"channels": 2**63 - 1}}, r"input.channels must be a whole number"),
        ({"threads": 1.5}, r"threads must be a whole number"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data, "test.toml")


def test_override_thresholds_checked_against_the_model_defaults():
    config = config_from_dict({"detection": {"gun_shot": {"threshold_on": 0.2}}})
    with pytest.raises(ConfigError, match=r"\[detection.gun_shot\].*threshold_off <= threshold_on"):
        config.detection_for({"gun_shot": ClassDetection(threshold_off=0.3)})
    with pytest.raises(ConfigError, match=r"does not know; its classes are \['gun_shot'\]"):
        config_from_dict({"detection": {"glass": {}}}).detection_for({"gun_shot": ClassDetection()})


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("model = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('device_name = "Küche"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xfc at offset 16\)"):
        load_config(latin1)


def test_configured_webhook_output_is_built(tmp_path):
    from edge_detect.cli_run import build_sinks

    table = {"outbox": str(tmp_path / "outbox.sqlite"), "url": "http://127.0.0.1:9/hook"}
    config = config_from_dict({"sinks": {"stdout": False, "webhook": table}})
    sinks = build_sinks(config)
    try:
        assert [type(s).__name__ for s in sinks] == ["WebhookSink"]
    finally:
        for sink in sinks:
            sink.close()
