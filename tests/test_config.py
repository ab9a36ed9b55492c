"""Runtime configuration: TOML file, flags over it, every value validated with a clear message."""

from __future__ import annotations

import pytest
from conftest import ROOT

from edge_detect.config import RuntimeConfig, config_from_dict, load_config
from edge_detect.detect import ClassDetection
from edge_detect.errors import ConfigError
from edge_detect.pipeline import StatePolicy

EXAMPLE = ROOT / "deploy" / "edge-detect.toml"


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
        ({"input": {"block_ms": 0.1}}, r"block_ms=0.1 is out of range"),
        ({"input": {"block_ms": "100"}}, r"block_ms must be a number"),
        ({"input": {"rate_hz": 1000}}, r"input.rate_hz.*not supported"),
        ({"input": {"format": "mp3"}}, r"'input.format': expected one of"),
        ({"input": {"channels": 0}}, r"'input.channels': expected a whole number >= 1"),
        ({"input": {"realtime": "yes"}}, r"'input.realtime': expected true or false"),
        ({"input": {"device": -1}}, r"device index must be >= 0"),
        ({"input": {"bogus": 1}}, r"\[input\]: unknown key"),
        ({"detection": {"alert_on": "never"}}, r"alert_on.*one of \['onset', 'end'\]"),
        ({"detection": {"dog_bark": {"thresh": 1}}}, r"\[detection.dog_bark\]: unknown"),
        ({"detection": {"dog_bark": {"confirm_ms": "x"}}}, r"must be a number"),
        ({"detection": {"dog_bark": 0.5}}, r"\[detection.dog_bark\] must be a table"),
        ({"state": {"quiet_s": -1}}, r"\[state\] state policy quiet_s must be a number >= 0"),
        ({"state": {"every": 1}}, r"\[state\]: unknown key"),
        ({"sinks": {"pager": {}}}, r"\[sinks.pager\] is not a known output"),
        ({"sinks": {"stdout": 1}}, r"'sinks.stdout': expected true or false"),
        ({"threads": 0}, r"'threads': expected a whole number from 1 to 64"),
        ({"sinks": {"heartbeat_s": -1}}, r"'sinks.heartbeat_s': expected a number >= 0"),
        ({"model": 3}, r"'model': expected a non-empty string"),
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
