"""Fuzzing every input surface (BENCHMARKS.md section 5): at least 1000 cases each, 0 tracebacks,
0 lost alerts.

- **WAV files**: mutated headers (formats, channels, rates, bits, chunk sizes, chunk order),
  truncations and random payloads, read whole, streamed block by block, and a sample through the
  command line;
- **configs**: a full config with one or more values replaced by something hostile (NaN, inf,
  huge and negative numbers, unicode, control characters, wrong types, unknown keys, tables where
  values belong), files that are not UTF-8 or not TOML; loaded, then every output built from it;
- **models**: the fixture model with mutated metadata (JSON that lies, NaN and huge numbers,
  wrong types, missing labels) and edited graphs (NaN/Inf/out-of-range scores, always or only on
  loud input), loaded, and run through the pipeline;
- **HTTP responses**: random and mutated answers, odd status lines, headers with non-ASCII
  digits, redirects, bodies that lie about their length, endpoints that dribble; each request
  classified, and a sink delivering through all of them loses nothing;
- **MQTT broker faults**: a fake broker answering the connection with random bytes, truncated or
  refusing CONNACKs, garbage after a good one, wrong PUBACKs, and closed connections; the sink
  never raises, and everything queued is published once a real broker is there.

"No traceback" is checked three ways: no exception escapes the call under test other than the
documented error class, pytest turns any exception in a thread into a failure (warnings are
errors), and no log record carries a traceback (a supervised restart logs one).
"""

from __future__ import annotations

import json
import logging
import math
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FIXTURES, ROOT
from webhook_receiver import SECRET, fuzzed_responses

from edge_detect.alerts import Alert
from edge_detect.config import RuntimeConfig, config_from_dict, load_config
from edge_detect.errors import AudioError, ConfigError, ModelError

CASES = 1000
TINY = FIXTURES / "tiny_model.onnx"


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fails the test if any log record carries a traceback (e.g. a supervised restart)."""
    caplog.set_level(logging.DEBUG, logger="edge_detect")
    yield
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
    assert tracebacks == [], tracebacks[:3]


def make_alert(seq: int) -> Alert:
    return Alert(
        id=uuid.uuid4().hex,
        seq=seq,
        label="baby_cry",
        score=0.9,
        start="2026-01-01T00:00:00+00:00",
        end="2026-01-01T00:00:01+00:00",
        duration_s=1.0,
        device="fuzz",
        model_id="m",
    )


# -- WAV ---------------------------------------------------------------------------------------

_GOOD_FORMATS = [(1, 8), (1, 16), (1, 24), (1, 32), (3, 32), (3, 64)]


def _chunk(chunk_id: bytes, body: bytes, size: int | None = None) -> bytes:
    declared = len(body) if size is None else size
    return chunk_id + struct.pack("<I", declared & 0xFFFFFFFF) + body + b"\0" * (len(body) & 1)


def _fuzzed_wav(rng: random.Random) -> bytes:
    tag, bits = rng.choice(_GOOD_FORMATS)
    channels = rng.choice([1, 1, 2, 6])
    rate = rng.choice([16_000, 44_100, 48_000, 8_000])
    frames = rng.randrange(0, 3000)
    payload = rng.randbytes(frames * channels * max(1, bits // 8))
    # one to three mutations of a valid file
    for _ in range(rng.randrange(1, 4)):
        field = rng.randrange(9)
        if field == 0:
            tag = rng.choice([0, 1, 2, 3, 0xFFFE, 0x55, rng.randrange(65536)])
        elif field == 1:
            channels = rng.choice([0, 1, 2, 255, 1024, 1025, 65535])
        elif field == 2:
            rate = rng.choice([0, 1, 3999, 4000, 384_000, 384_001, 2**31, 2**32 - 1])
        elif field == 3:
            bits = rng.choice([0, 1, 4, 7, 12, 20, 33, 64, 65535])
        elif field == 4:
            payload = payload[: rng.randrange(len(payload) + 1)]
    block = channels * bits // 8
    fmt_body = struct.pack(
        "<HHIIHH", tag, channels, rate, rate * block & 0xFFFFFFFF, block & 0xFFFF, bits
    )
    if tag == 0xFFFE:
        fmt_body += struct.pack("<HHHI", 22, bits, 0, 0) + struct.pack("<H", rng.choice([1, 3, 7]))
        fmt_body += rng.randbytes(14)
    chunks = [_chunk(b"fmt ", fmt_body)]
    data_size = rng.choice([None, None, 0, 0xFFFFFFFF, len(payload) + 1000, len(payload) // 2])
    chunks.append(_chunk(b"data", payload, data_size))
    if rng.random() < 0.3:
        chunks.insert(
            rng.randrange(len(chunks) + 1), _chunk(b"LIST", rng.randbytes(rng.randrange(40)))
        )
    if rng.random() < 0.1:
        chunks.reverse()  # data before fmt
    if rng.random() < 0.1:
        chunks[0] = chunks[0][:4] + struct.pack("<I", rng.choice([0, 8, 15, 2**31])) + chunks[0][8:]
    body = b"WAVE" + b"".join(chunks)
    riff = b"RIFF" + struct.pack("<I", len(body) & 0xFFFFFFFF) + body
    kind = rng.random()
    if kind < 0.08:
        riff = riff[: rng.randrange(len(riff) + 1)]  # truncated anywhere
    elif kind < 0.12:
        riff = rng.randbytes(rng.randrange(0, 200))  # not a WAV at all
    elif kind < 0.16:
        data = bytearray(riff)
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        riff = bytes(data)
    return riff


def test_1000_fuzzed_wav_files_give_audio_or_one_clear_error(tmp_path: Path, no_tracebacks) -> None:
    from edge_detect.audio import read_wav
    from edge_detect.sources import WavFileSource

    rng = random.Random(15)
    outcomes = {"audio": 0, "error": 0}
    for i in range(CASES):
        path = tmp_path / f"f{i % 10}.wav"
        path.write_bytes(_fuzzed_wav(rng))
        try:
            audio = read_wav(path)
            assert audio.samples.dtype == np.float32 and len(audio.samples) > 0
            source = WavFileSource(path, 16_000, block_ms=100, realtime=False)
            for block in source.blocks():  # streamed, as the runtime reads it
                assert np.isfinite(block.samples).all() or audio.samples.dtype == np.float32
            outcomes["audio"] += 1
        except AudioError as exc:
            message = str(exc)
            assert "\n" not in message and str(path) in message, message
            outcomes["error"] += 1
    assert sum(outcomes.values()) == CASES
    assert outcomes["audio"] > 50 and outcomes["error"] > 300, outcomes


def test_fuzzed_wav_files_through_the_command_line(tmp_path: Path) -> None:
    rng = random.Random(16)
    for i in range(12):
        path = tmp_path / f"c{i}.wav"
        path.write_bytes(_fuzzed_wav(rng))
        result = subprocess.run(
            [sys.executable, "-m", "edge_detect", "run", "--input", str(path),
             "--model", str(TINY)],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert result.returncode in (0, 2), result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        if result.returncode == 2:  # one line, after the log lines
            assert result.stderr.splitlines()[-1].startswith("edge-detect: error:")


# -- configs -----------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is JSON-compatible for these
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(value)


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer (tables as [sections], everything else inline)."""
    lines = [
        f"{json.dumps(k)} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)
    ]
    for key, value in data.items():
        if isinstance(value, dict):
            name = f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key)
            lines.append(f"\n[{name}]")
            lines.append(_toml(value, name))
    return "\n".join(lines)


def _valid_config(tmp_path: Path) -> dict[str, Any]:
    return {
        "model": str(TINY),
        "device_name": "kitchen",
        "threads": 1,
        "input": {"source": "mic", "block_ms": 100, "rate_hz": 16000, "format": "s16le",
                  "channels": 1, "stall_timeout_s": 3.0, "backoff_max_s": 10.0, "realtime": False},
        "detection": {"alert_on": "onset", "baby_cry": {"threshold_on": 0.6, "confirm_ms": 50}},
        "state": {"quiet_s": 5.0, "interval_s": 60.0, "warmup_s": 2.0},
        "clips": {"directory": str(tmp_path / "clips"), "pre_roll_s": 1.0, "max_mb": 10.0},
        "sinks": {
            "heartbeat_s": 0,
            "stdout": True,
            "webhook": {
                "outbox": str(tmp_path / "outbox.sqlite"), "url": "http://127.0.0.1:9/hook",
                "secret": SECRET, "timeout_s": 5, "backoff_initial_s": 5, "max_pending": 100,
                "throttle": {"cooldown_s": 60, "max_alerts": 5, "window_s": 600},
            },
            "metrics": {"enabled": False, "listen": "127.0.0.1:9750"},
        },
    }  # fmt: skip


_HOSTILE = [
    float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 2**63 - 1, -(2**63), 0, -1, 1e-320,
    True, False, "", " ", "\u00b2", "٣", "ｆｏｏ", "\u202e", "a\x00b", "x" * 10_000, "nan",
    [], [1, 2], ["a"], {}, {"x": 1}, 3.5, 100, "100",
]  # fmt: skip


def _leaves(data: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out += _leaves(value, (*path, key))
        out.append((*path, key))
    return out


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _fuzzed_config(rng: random.Random, tmp_path: Path) -> bytes:
    data = _valid_config(tmp_path)
    for _ in range(rng.randrange(1, 4)):
        leaves = _leaves(data)
        path = rng.choice(leaves)
        action = rng.random()
        if action < 0.75:
            _set(data, path, rng.choice(_HOSTILE))
        elif action < 0.85:
            _set(data, (*path[:-1], rng.choice(["bogus", "Model", "ürl", "timeout"])), 1)
        else:
            parent = data
            for key in path[:-1]:
                parent = parent[key]
            parent.pop(path[-1], None)
    text = _toml(data).encode("utf-8")
    kind = rng.random()
    if kind < 0.03:
        text = text.replace(b"kitchen", "Küche".encode("latin-1"))  # not UTF-8
    elif kind < 0.06:
        text = text[: rng.randrange(len(text))]  # cut: usually not TOML
    return text


def test_1000_fuzzed_configs_give_a_detector_or_one_clear_error(
    tmp_path: Path, no_tracebacks, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_detect.cli_run import build_sinks

    monkeypatch.chdir(tmp_path)  # a fuzzed relative path (an outbox named 'ｆｏｏ') lands here
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))  # and a default outbox
    (tmp_path / "state").mkdir()
    from edge_detect.model import load_model

    model = load_model(TINY)
    rng = random.Random(8)
    outcomes = {"ok": 0, "error": 0}
    for i in range(CASES):
        path = tmp_path / "fuzz.toml"
        path.write_bytes(_fuzzed_config(rng, tmp_path / f"run{i % 5}"))
        (tmp_path / f"run{i % 5}").mkdir(exist_ok=True)
        try:
            config = load_config(path)
            config.detection_for(model.detection)
            sinks = build_sinks(config)
            for sink in sinks:
                sink.close()
            outcomes["ok"] += 1
        except ConfigError as exc:
            assert "\n" not in str(exc), str(exc)[:300]
            outcomes["error"] += 1
    assert sum(outcomes.values()) == CASES
    assert outcomes["ok"] > 50 and outcomes["error"] > 500, outcomes


def test_every_numeric_setting_refuses_nan_and_inf() -> None:
    """Each numeric key of the runtime config, one by one: finite and in range, named."""
    import dataclasses

    numeric = {
        f.metadata["edge_detect.strict"]["key"] or f.name
        for f in dataclasses.fields(RuntimeConfig)
        if "edge_detect.strict" in f.metadata
        and f.metadata["edge_detect.strict"]["kind"] in (int, float)
    }
    assert len(numeric) >= 10
    for key in sorted(numeric):
        section, _, name = key.rpartition(".")
        for bad in (float("nan"), float("inf"), 1e308):
            data: dict[str, Any] = {section: {name: bad}} if section else {name: bad}
            with pytest.raises(ConfigError, match=f"{name} must be a"):
                config_from_dict(data, "fuzz.toml")


# -- models ------------------------------------------------------------------------------------

onnx = pytest.importorskip("onnx")


def _model_variants() -> Iterator[tuple[str, Any]]:
    """Edits of the fixture model's metadata (most) and graph (some), as (kind, edit)."""
    rng = random.Random(4)
    proto = onnx.load(str(TINY))
    meta = {p.key: p.value for p in proto.metadata_props}
    keys = sorted(meta)
    for i in range(CASES):
        changed = dict(meta)
        key = rng.choice(keys)
        action = rng.random()
        if action < 0.15:
            changed.pop(key)
        elif action < 0.3:
            changed[key] = rng.choice(["", "{", "null", "[]", "\u00b2", "x" * 5000, "NaN"])
        else:
            try:
                value = json.loads(changed[key])
            except json.JSONDecodeError:
                value = changed[key]
            if isinstance(value, dict) and value:
                inner = rng.choice(sorted(value))
                if isinstance(value[inner], dict) and value[inner]:
                    field = rng.choice(sorted(value[inner]))
                    value[inner][field] = rng.choice(_HOSTILE[:20])
                else:
                    value[inner] = rng.choice(_HOSTILE)
            elif isinstance(value, list) and value:
                value[rng.randrange(len(value))] = rng.choice(_HOSTILE)
            else:
                value = rng.choice(_HOSTILE)
            changed[key] = json.dumps(value, allow_nan=True)
        yield "metadata", changed
        if i % 50 == 0:
            yield "graph", rng.choice(["nan", "inf", "negative", "nan_when_loud", "inf_when_loud"])


class Keep:
    """A sink that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    def emit(self, message: Any) -> None:
        self.messages.append(message)

    def close(self) -> None:
        pass


def _graph_edit(proto: Any, how: str) -> None:
    from onnx import TensorProto, helper

    softmax = next(n for n in proto.graph.node if n.op_type == "Softmax")
    softmax.output[0] = "probs"
    value = {"nan": math.nan, "inf": math.inf, "negative": -2.0}.get(how.split("_")[0], 0.0)
    nodes = []
    if how.endswith("when_loud"):
        # (limit - max(features)) ** 0.5 is NaN when loud; times value it becomes NaN or inf
        const = helper.make_tensor("k", TensorProto.FLOAT, [], [0.0])
        scale = helper.make_tensor(
            "s", TensorProto.FLOAT, [], [value if how.startswith("inf") else 0.0]
        )
        nodes += [
            helper.make_node("Constant", [], ["limit"], value=const),
            helper.make_node("Constant", [], ["scale"], value=scale),
            helper.make_node("ReduceMax", ["features"], ["loudest"], keepdims=0),
            helper.make_node("Sub", ["limit", "loudest"], ["margin"]),
            helper.make_node("Sqrt", ["margin"], ["root"]),
            helper.make_node("Mul", ["root", "scale"], ["poison"]),
        ]
    else:
        tensor = helper.make_tensor("p", TensorProto.FLOAT, [], [value])
        nodes.append(helper.make_node("Constant", [], ["poison"], value=tensor))
    nodes.append(helper.make_node("Add", ["probs", "poison"], ["scores"]))
    proto.graph.node.extend(nodes)


def test_1000_fuzzed_models_load_or_give_one_clear_error_and_never_alert_nan(
    tmp_path: Path, no_tracebacks
) -> None:
    from edge_detect.model import load_model
    from edge_detect.pipeline import Pipeline

    sys.path.insert(0, str(Path(__file__).parent))
    from test_pipeline import TONE_DETECTION, PlantedSource

    outcomes = {"loaded": 0, "error": 0}
    path = tmp_path / "fuzz.onnx"
    for kind, edit in _model_variants():
        proto = onnx.load(str(TINY))
        if kind == "metadata":
            del proto.metadata_props[:]
            for key, value in edit.items():
                proto.metadata_props.add(key=key, value=value)
        else:
            _graph_edit(proto, edit)
        onnx.save(proto, str(path))
        try:
            model = load_model(path)
        except (ModelError, ConfigError) as exc:
            assert "\n" not in str(exc), str(exc)[:300]
            outcomes["error"] += 1
            continue
        outcomes["loaded"] += 1
        if kind == "graph":  # only the loud-input ones load; run them on loud input
            keep = Keep()
            detection = {k: v for k, v in TONE_DETECTION.items() if k in model.labels}
            Pipeline(model, [keep], detection=detection).run(PlantedSource(6.0, [2.0]))
            for message in keep.messages:
                json.loads(message.to_json(), parse_constant=lambda c: pytest.fail(c))
    assert sum(outcomes.values()) >= CASES
    assert outcomes["loaded"] > 20 and outcomes["error"] > 300, outcomes


# -- HTTP responses ----------------------------------------------------------------------------


class ScriptedServer:
    """A raw TCP server that reads each request whole and sends the next scripted answer
    (``None``: dribble a 200 one byte every 0.2 s); then 200 OK for good."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = list(answers)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.served = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(10)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        part = conn.recv(65536)
                        if not part:
                            break
                        data += part
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    while len(body) < length:
                        body += conn.recv(65536)
                    answer = (
                        self.answers.pop(0)
                        if self.answers
                        else b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    )
                    self.served += 1
                    if answer is None:
                        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
                            conn.sendall(bytes([byte]))
                            time.sleep(0.2)
                    else:
                        conn.sendall(answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


def test_1000_fuzzed_responses_are_each_classified_within_the_deadline(
    tmp_path: Path, no_tracebacks
) -> None:
    """Each answer ends as delivered/retry/dead/gone, never an exception, 'delivered' only for a
    real 2xx status line, within the request deadline (dribbling endpoints included)."""
    import re

    from edge_detect.webhook_endpoint import Backoff, Secret, WebhookEndpoint
    from edge_detect.webhook_http import post

    answers: list[bytes | None] = list(fuzzed_responses(CASES, seed=1234))
    for at in range(0, CASES, 200):
        answers.insert(at, None)  # dribblers among them
    server = ScriptedServer(answers)
    ep = WebhookEndpoint(
        url=f"http://127.0.0.1:{server.port}/hook", secret=Secret(SECRET), name="fuzz",
        timeout_s=0.5, backoff=Backoff(initial_s=0.05, max_s=0.2),
    )  # fmt: skip
    body = make_alert(1).to_json().encode()
    kinds: dict[str, int] = {}
    try:
        for answer in list(answers):
            started = time.monotonic()
            outcome = post(ep, "id1", body, ssl_context=None, user_agent="fuzz")
            assert time.monotonic() - started < 3.0  # the deadline holds (plus a loaded machine)
            kinds[outcome.kind] = kinds.get(outcome.kind, 0) + 1
            if outcome.kind == "delivered":
                assert answer is not None and re.match(rb"HTTP/[^ ]* +2\d\d", answer), answer
            assert "\n" not in outcome.detail and len(outcome.detail) < 600
    finally:
        server.close()
    assert set(kinds) == {"delivered", "retry", "dead", "gone"}, kinds
    assert sum(kinds.values()) == len(answers) >= CASES


def test_a_sink_delivering_through_fuzzed_responses_loses_nothing(
    tmp_path: Path, no_tracebacks
) -> None:
    """300 alerts through an endpoint answering 1000 fuzzed responses, then 200: each alert is
    delivered or dead-lettered with its reason (4xx/3xx), none lost or stuck; a 410 disables
    the endpoint, keeping its queue, and enabling it delivers the rest."""
    from edge_detect.webhook import WebhookSink
    from edge_detect.webhook_endpoint import Backoff, Secret, WebhookEndpoint

    server = ScriptedServer(fuzzed_responses(CASES, seed=99))
    ep = WebhookEndpoint(
        url=f"http://127.0.0.1:{server.port}/hook", secret=Secret(SECRET), name="fuzz",
        timeout_s=0.5, backoff=Backoff(initial_s=0.001, max_s=0.002, jitter=0.0),
    )  # fmt: skip
    sink = WebhookSink([ep], tmp_path / "outbox.sqlite")
    alerts = [make_alert(i) for i in range(300)]
    try:
        for alert in alerts:
            sink.emit(alert)
        deadline = time.monotonic() + 120
        while sink.outbox.pending_count("fuzz") and time.monotonic() < deadline:
            if sink.disabled():
                sink.outbox.enable_endpoint("fuzz")  # as 'edge-detect webhook enable' does
            time.sleep(0.05)
        assert sink.outbox.pending_count("fuzz") == 0
        dead = {d.message_id for d in sink.outbox.dead_letters("fuzz")}
        delivered = sink.stats["fuzz"].delivered
    finally:
        sink.close()
        server.close()
    assert delivered + len(dead) == len(alerts)  # every alert accounted for, none lost
    assert dead <= {a.id for a in alerts}
    assert server.served >= CASES


# -- MQTT broker faults ------------------------------------------------------------------------

paho = pytest.importorskip("paho.mqtt.client")


def _fuzzed_broker_answers(count: int, seed: int) -> list[bytes]:
    """What a faulty broker answers a CONNECT with."""
    rng = random.Random(seed)
    good = bytes([0x20, 0x02, 0x00, 0x00])  # CONNACK, accepted
    out = []
    for _ in range(count):
        kind = rng.randrange(8)
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(0, 64)))
        elif kind == 1:
            out.append(good[: rng.randrange(4)])  # cut short
        elif kind == 2:
            out.append(bytes([0x20, 0x02, 0x00, rng.choice([1, 2, 3, 4, 5, 0x80, 0x87])]))
        elif kind == 3:
            out.append(good + rng.randbytes(rng.randrange(1, 40)))  # garbage after a good one
        elif kind == 4:  # PUBACKs for packets never sent, and a bad remaining length
            out.append(
                good
                + bytes([0x40, 0x02])
                + rng.randbytes(2)
                + bytes([0x40, 0xFF, 0xFF, 0xFF, 0xFF])
            )
        elif kind == 5:
            out.append(bytes([rng.randrange(256), 0x02, 0x00, 0x00]))  # wrong packet type
        elif kind == 6:
            out.append(b"")  # closes at once
        else:
            out.append(good + bytes([0xE0, 0x00]))  # accepted, then a DISCONNECT
    return out


class FaultyBroker:
    """Accepts MQTT connections and answers each with the next scripted bytes, then closes."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = list(answers)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(2)
                    conn.recv(4096)  # the CONNECT
                    conn.sendall(self.answers.pop(0))
                    time.sleep(0.005)
                except OSError:
                    pass
        self.done.set()
        self.server.close()


def test_1000_broker_faults_never_raise_and_lose_nothing(tmp_path: Path, no_tracebacks) -> None:
    """The MQTT sink against 1000 faulty broker answers (reconnecting every 10 ms), then a real
    broker on the same port: every queued alert published once, nothing raised anywhere."""
    import shutil

    from edge_detect.mqtt import MqttSink

    mosquitto = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    broker = FaultyBroker(_fuzzed_broker_answers(CASES, seed=10))
    sink = MqttSink(
        "127.0.0.1", broker.port, outbox=tmp_path / "m.sqlite", device_name="fuzz",
        publish_timeout_s=0.2, reconnect_min_s=0.01, reconnect_max_s=0.02,
    )  # fmt: skip
    alerts = [make_alert(i) for i in range(20)]
    proc = None
    try:
        for alert in alerts:
            sink.emit(alert)
        assert broker.done.wait(120), f"{len(broker.answers)} broker answers left"
        assert all(t.restarts == 0 for t in sink.threads)  # no fault reached the supervisor
        if mosquitto is None:
            pytest.skip("mosquitto is needed for the end of this test (apt install mosquitto)")
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(f"listener {broker.port} 127.0.0.1\nallow_anonymous true\n")
        proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        assert sink.flush(60)
    finally:
        sink.close()
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    assert sink.delivered >= len(alerts)  # health events go the same way
