"""Secrets from a value, a file or an environment variable: one reader, one message style, and
the secret never in a message (issue 17: the webhook and MQTT copies had drifted apart)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_detect.credentials import read_secret
from edge_detect.errors import ConfigError

SECRET = "s3cr3t-value-never-shown"


def test_the_three_ways_give_the_same_secret(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")  # a trailing newline is normal in a file
    monkeypatch.setenv("EDGE_SECRET_TEST", SECRET)
    assert read_secret({"secret": SECRET}, "secret", where="[x]") == SECRET
    assert read_secret({"secret_file": str(path)}, "secret", where="[x]") == SECRET
    assert read_secret({"secret_env": "EDGE_SECRET_TEST"}, "secret", where="[x]") == SECRET
    assert read_secret({}, "secret", where="[x]") is None
    assert read_secret({"password": SECRET}, "password", where="[x]") == SECRET


def test_every_mistake_is_one_line_naming_the_key_never_the_secret(
    tmp_path: Path, monkeypatch
) -> None:
    latin1 = tmp_path / "latin1"
    latin1.write_bytes("Küche".encode("latin-1"))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * 70_000)
    monkeypatch.setenv("EDGE_EMPTY_SECRET", "  ")
    cases = [
        ({"secret": SECRET, "secret_env": "X"}, "give only one of secret, secret_file, secret_env"),
        ({"secret": 12345}, r"secret must be a string \(value not shown\)"),
        ({"secret_file": str(tmp_path / "missing")}, "cannot read secret_file .*No such file"),
        ({"secret_file": str(latin1)}, "secret_file .* is not UTF-8 text"),
        ({"secret_file": str(empty)}, "the secret given by secret_file is empty"),
        ({"secret_file": str(huge)}, "secret_file .* is larger than 65536 bytes"),
        ({"secret_file": 7}, "secret_file must be a file or folder path; got 7"),
        (
            {"secret_env": "EDGE_NOT_SET_ANYWHERE"},
            "environment variable 'EDGE_NOT_SET_ANYWHERE' \\(secret_env\\) is not set",
        ),
        ({"secret_env": "EDGE_EMPTY_SECRET"}, "the secret given by secret_env is empty"),
        ({"secret_env": ""}, "secret_env must name an environment variable"),
    ]
    for settings, message in cases:
        with pytest.raises(ConfigError, match=f"^\\[sinks.x\\]: {message}") as info:
            read_secret(settings, "secret", where="[sinks.x]")
        assert SECRET not in str(info.value) and "\n" not in str(info.value)


def test_webhook_and_mqtt_read_their_secrets_the_same_way(tmp_path: Path) -> None:
    from edge_detect.mqtt import mqtt_sink_from_settings
    from edge_detect.webhook_endpoint import webhook_endpoint_from_settings

    missing = str(tmp_path / "missing")
    with pytest.raises(ConfigError) as webhook:
        webhook_endpoint_from_settings({"url": "http://h/x", "secret_file": missing}, where="[w]")
    pytest.importorskip("paho.mqtt")
    with pytest.raises(ConfigError) as mqtt:
        mqtt_sink_from_settings({"host": "h", "password_file": missing})
    assert (
        str(webhook.value) == f"[w]: cannot read secret_file {missing!r}: No such file or directory"
    )
    assert str(mqtt.value) == (
        f"[sinks.mqtt]: cannot read password_file {missing!r}: No such file or directory"
    )
