"""MQTT output for Home Assistant and friends (optional extra: ``pip install 'edge-detect[mqtt]'``).

Topics (``base`` defaults to ``edge-detect/<node>``, ``<node>`` being the device name made safe):

- ``<base>/status``: ``online`` / ``offline``, retained; ``offline`` is the last will, so the
  broker announces it when the detector dies without saying goodbye;
- ``<base>/event/<class>``: each alert, QoS 1, the alert's JSON plus ``event_type`` (= its class,
  what Home Assistant's MQTT ``event`` entities read);
- ``<base>/health``: health events, QoS 1;
- ``<discovery_prefix>/event/<node>/<class>/config``: Home Assistant MQTT discovery, retained,
  one ``event`` entity per class (the configured ``classes`` at connect, any other class before
  its first alert), so each class appears without manual setup.

Like the webhooks, messages go through a durable :class:`~edge_detect.outbox.Outbox` first and
are removed only when the broker acknowledged them (PUBACK), so a broker outage or a SIGKILL loses
nothing. The connection is kept by a supervised thread of our own that reconnects with a growing
delay (1 s doubling to a minute) and says why it cannot connect: a warning naming the broker and
the error (at most once a minute while it lasts), an ``mqtt_disconnected`` health event when the
connection is lost or refused and ``mqtt_connected`` when it is back, and
``edge_detect_mqtt_connected`` / ``edge_detect_mqtt_pending`` in the metrics and ``edge-detect
status``. Passwords never appear in reprs, logs or error messages.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_detect import __version__
from edge_detect.alerts import Alert, HealthEvent
from edge_detect.credentials import read_secret
from edge_detect.errors import ConfigError, MissingExtraError
from edge_detect.outbox import DEFAULT_MAX_PENDING, Outbox
from edge_detect.sinks import Figure, Output
from edge_detect.strict import check_integer, check_number, check_path

__all__ = ["MqttSink", "mqtt_sink_from_settings", "node_id"]

log = logging.getLogger(__name__)

QUEUE_NAME = "mqtt"
"""The outbox queue (endpoint) name of the MQTT sink."""
QOS_AT_LEAST_ONCE = 1
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 60
_NODE_SAFE = re.compile(r"[^a-zA-Z0-9_-]+")
_IDLE_POLL_S = 60.0
_BUSY_POLL_S = 2.0
"""Poll while the outbox keeps messages in memory (a full disk), seconds."""
REPEAT_WARNING_S = 60.0
"""The same connection warning is logged at most this often while an outage lasts."""
MQTT_ERR_SUCCESS = 0


def _paho() -> Any:
    try:
        import paho.mqtt.client as client
    except ImportError:
        raise MissingExtraError("paho-mqtt", "mqtt", "The MQTT output") from None
    return client


def node_id(device_name: str) -> str:
    """The device name as an MQTT topic level and Home Assistant id."""
    return _NODE_SAFE.sub("_", device_name).strip("_") or "edge_detect"


class MqttSink(Output):
    """A :class:`~edge_detect.sinks.Sink` publishing alerts and health to an MQTT broker.

    Parameters
    ----------
    host, port
        The broker.
    outbox
        Durable queue (an Outbox or its path); its own file, not the webhook sink's.
    device_name
        Names the device in topics and in Home Assistant.
    classes
        Classes announced by discovery at connect (others are announced when first seen).
    username, password
        Broker credentials (the password is never shown).
    tls, ca_file
        Use TLS, verifying the broker against the system CAs or ``ca_file``.
    base_topic
        Topic prefix; default ``edge-detect/<node>``.
    discovery_prefix
        Home Assistant's discovery prefix; None disables discovery.
    publish_timeout_s
        How long to wait for the broker's PUBACK before trying again, seconds.
    keepalive_s
        MQTT keepalive; the broker declares us offline after 1.5 times this without traffic.
    reconnect_min_s, reconnect_max_s
        First and longest wait between connection attempts, seconds (doubling in between).
    """

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        outbox: Outbox | str | Path,
        device_name: str,
        classes: Sequence[str] = (),
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        base_topic: str | None = None,
        discovery_prefix: str | None = "homeassistant",
        publish_timeout_s: float = 10.0,
        keepalive_s: int = 60,
        max_pending: int = DEFAULT_MAX_PENDING,
        reconnect_min_s: float = RECONNECT_MIN_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
    ) -> None:
        mqtt = _paho()
        super().__init__()
        self.host, self.port = host, port
        self.device_name = device_name
        self.node = node_id(device_name)
        self.base_topic = (base_topic or f"edge-detect/{self.node}").rstrip("/")
        self.discovery_prefix = discovery_prefix
        self.publish_timeout_s = publish_timeout_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self._announced: set[str] = set()
        self._wanted_classes = list(classes)
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self.delivered = 0
        self.failed_puts = 0
        self._owns_outbox = not isinstance(outbox, Outbox)
        self.outbox = (
            outbox if isinstance(outbox, Outbox) else Outbox(outbox, max_pending=max_pending)
        )
        client_id = f"edge-detect-{self.node}-{os.getpid()}"
        self._client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls:
            self._client.tls_set(ca_certs=ca_file)
        self._client.will_set(self.status_topic, "offline", qos=QOS_AT_LEAST_ONCE, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.connect_async(host, port, keepalive=keepalive_s)
        self.outbox.on_storage = self.health
        self.outbox.on_overflow = lambda detail: self.health("overflow", detail)
        self._down_since: float | None = time.monotonic()
        self._problem = ""
        """Why the broker cannot be reached (logged at most once a minute while it lasts)."""
        self._last_warning = -math.inf
        self._reported_down = False
        self.supervise("mqtt connection", self._connection_loop, self._stop)
        self.supervise("mqtt delivery", self._deliver_loop, self._stop)

    @property
    def status_topic(self) -> str:
        """Topic of the retained online/offline status (the last will)."""
        return f"{self.base_topic}/status"

    def event_topic(self, label: str) -> str:
        """Topic of one class's alerts."""
        return f"{self.base_topic}/event/{node_id(label)}"

    @property
    def health_topic(self) -> str:
        """Topic of health events."""
        return f"{self.base_topic}/health"

    def discovery_topic(self, label: str) -> str:
        """Home Assistant discovery topic of one class's event entity."""
        return f"{self.discovery_prefix}/event/{self.node}/{node_id(label)}/config"

    def discovery_config(self, label: str) -> dict[str, Any]:
        """Home Assistant MQTT discovery payload of one class's ``event`` entity."""
        return {
            "name": label.replace("_", " "),
            "unique_id": f"{self.node}_{node_id(label)}",
            "state_topic": self.event_topic(label),
            "event_types": [label],
            "availability_topic": self.status_topic,
            "payload_available": "online",
            "payload_not_available": "offline",
            "qos": QOS_AT_LEAST_ONCE,
            "device": {
                "identifiers": [f"edge_detect_{self.node}"],
                "name": self.device_name,
                "manufacturer": "edge-detect",
                "sw_version": __version__,
            },
        }

    # -- connection ------------------------------------------------------------------------

    def _connection_loop(self) -> None:
        """Connect, keep the connection, reconnect with a growing delay (a supervised thread)."""
        delay = self.reconnect_min_s
        while not self._stop.is_set():
            try:
                self._client.reconnect()  # the host and port given to connect_async
            except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS
                self._cannot_connect(f"{type(exc).__name__}: {exc}")
            else:
                while not self._stop.is_set():
                    if self._client.loop(timeout=1.0) != MQTT_ERR_SUCCESS:
                        break  # lost: on_disconnect said why
                    if self._connected.is_set():
                        delay = self.reconnect_min_s
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.reconnect_max_s)

    def _cannot_connect(self, problem: str) -> None:
        """Say why the broker cannot be reached: a warning at most once a minute, a health event
        once per outage."""
        self._connected.clear()
        if self._down_since is None:
            self._down_since = time.monotonic()
        now = time.monotonic()
        if problem != self._problem or now - self._last_warning >= REPEAT_WARNING_S:
            log.warning(
                "MQTT broker %s:%s: %s; retrying (%d message(s) waiting)",
                self.host,
                self.port,
                problem,
                self.outbox.pending_count(QUEUE_NAME),
            )
            self._last_warning = now
        self._problem = problem
        if not self._reported_down:
            self._reported_down = True
            self.health("mqtt_disconnected", f"broker {self.host}:{self.port}: {problem}")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            self._cannot_connect(f"the broker refused the connection: {reason}")
            return
        log.info("MQTT connected to %s:%s", self.host, self.port)
        with self._lock:
            for label in [*self._wanted_classes, *self._announced]:
                self._announce(label)
        client.publish(self.status_topic, "online", qos=QOS_AT_LEAST_ONCE, retain=True)
        self._connected.set()
        self._down_since = None
        self._problem = ""
        if self._reported_down:
            self._reported_down = False
            self.health("mqtt_connected", f"broker {self.host}:{self.port}: connected again")
        self._wake.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if not self._stop.is_set() and was_connected:
            self._cannot_connect(f"connection lost ({reason})")

    def collect(self) -> Iterable[Figure]:
        """Connection state, queue, deliveries, and the two threads."""
        yield from super().collect()
        yield "edge_detect_mqtt_connected", {}, 1.0 if self._connected.is_set() else 0.0
        yield "edge_detect_mqtt_pending", {}, float(self.outbox.pending_count(QUEUE_NAME))
        yield "edge_detect_mqtt_delivered_total", {}, float(self.delivered)
        yield "edge_detect_outbox_memory_messages", {"output": "mqtt"}, float(self.outbox.in_memory)

    def _announce(self, label: str) -> None:
        """Publish a class's discovery config (retained); call with self._lock held."""
        self._announced.add(label)
        if self.discovery_prefix is None:
            return
        payload = json.dumps(self.discovery_config(label), sort_keys=True)
        self._client.publish(
            self.discovery_topic(label), payload, qos=QOS_AT_LEAST_ONCE, retain=True
        )

    # -- sink --------------------------------------------------------------------------------

    def emit(self, message: Alert | HealthEvent) -> None:
        """Commit the message to the outbox and wake the publisher (never waits for the broker)."""
        try:
            self.outbox.put([QUEUE_NAME], message.id, message.to_json().encode(), now=time.time())
        except ValueError as exc:  # too big for the outbox; the loss is logged loudly
            self.failed_puts += 1
            log.error("could not queue message %s for MQTT: %s", message.id, exc)
            return
        self._wake.set()

    def _topic_and_payload(self, body: bytes) -> tuple[str, bytes]:
        data = json.loads(body)
        if data.get("type") == "alert":
            label = str(data["class"])
            with self._lock:
                if label not in self._announced and self._connected.is_set():
                    self._announce(label)
            data["event_type"] = label
            return self.event_topic(label), json.dumps(data, sort_keys=True).encode()
        return self.health_topic, body

    def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            record = self.outbox.head(QUEUE_NAME)
            if record is None:
                self._wake.wait(_BUSY_POLL_S if self.outbox.in_memory else _IDLE_POLL_S)
                continue
            if not self._connected.is_set():
                self._connected.wait(1.0)
                continue
            try:
                topic, payload = self._topic_and_payload(record.body)
            except (ValueError, KeyError, TypeError) as exc:  # not our JSON: cannot be published
                self.outbox.dead_letter(record.seq, f"not a message: {exc}", now=time.time())
                continue
            info = self._client.publish(topic, payload, qos=QOS_AT_LEAST_ONCE)
            try:
                info.wait_for_publish(self.publish_timeout_s)
                acknowledged = info.is_published()
            except (RuntimeError, ValueError) as exc:
                log.warning("MQTT publish of %s failed: %s", record.message_id, exc)
                acknowledged = False
            if acknowledged:
                self.outbox.mark_delivered(record.seq)
                self.delivered += 1
            else:
                self._stop.wait(RECONNECT_MIN_S)

    def flush(self, timeout_s: float) -> bool:
        """Wait (real seconds) until the outbox holds nothing for MQTT; True if so."""
        deadline = time.monotonic() + timeout_s
        while self.outbox.pending_count(QUEUE_NAME):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        """Say 'offline', disconnect and stop; pending messages stay in the outbox."""
        if self._stop.is_set():
            return
        if self._connected.is_set():
            info = self._client.publish(
                self.status_topic, "offline", qos=QOS_AT_LEAST_ONCE, retain=True
            )
            try:
                info.wait_for_publish(self.publish_timeout_s)
            except (RuntimeError, ValueError):
                pass
        self._stop.set()
        self._wake.set()
        self._connected.set()  # wakes a delivery thread waiting for the broker
        for thread in self.threads:
            thread.join(self.publish_timeout_s + 2)
        self._client.disconnect()
        left = self.outbox.pending_count(QUEUE_NAME)
        if left:
            log.warning(
                "MQTT: %d message(s) still queued in %s; they are published when edge-detect "
                "runs again with this outbox",
                left,
                self.outbox.path,
            )
        if self._owns_outbox and not any(t.is_alive() for t in self.threads):
            self.outbox.close()

    def __repr__(self) -> str:
        return f"MqttSink({self.host!r}, {self.port}, base_topic={self.base_topic!r})"


_KEYS = (
    "host",
    "port",
    "username",
    "password",
    "password_file",
    "password_env",
    "tls",
    "ca_file",
    "base_topic",
    "discovery_prefix",
    "discovery",
    "classes",
    "device_name",
    "outbox",
    "max_pending",
    "publish_timeout_s",
    "keepalive_s",
)


def mqtt_sink_from_settings(settings: Mapping[str, Any], config: object = None) -> MqttSink:
    """Build the MQTT sink from the ``[sinks.mqtt]`` TOML table (a ``SINK_BUILDERS`` entry).

    Example::

        [sinks.mqtt]
        host = "homeassistant.local"
        port = 1883
        username = "edge"
        password_file = "/etc/edge-detect/mqtt.password"
        classes = ["dog_bark", "baby_cry"]   # announced to Home Assistant at connect
        # outbox = "/var/lib/edge-detect/mqtt-outbox.sqlite"   (default: beside the webhooks')

    ``config`` (the runtime config) supplies ``device_name`` when the table does not.
    """
    where = "[sinks.mqtt]"
    unknown = sorted(set(settings) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; the keys are {list(_KEYS)}")

    def typed(key: str, kind: type | tuple[type, ...], default: Any, what: str) -> Any:
        value = settings.get(key, default)
        if value is not None and (
            isinstance(value, bool) and kind is not bool or not isinstance(value, kind)
        ):
            raise ConfigError(f"{where}: {key} must be {what}; got {value!r}")
        return value

    host = typed("host", str, None, "the broker's host name")
    if not host:
        raise ConfigError(f'{where}: host is required, e.g. host = "homeassistant.local"')
    port = check_integer(settings.get("port", 1883), "port", low=1, high=65535, where=where)
    password = read_secret(settings, "password", where=where)
    classes = typed("classes", list, [], "a list of class names")
    if not all(isinstance(c, str) for c in classes):
        raise ConfigError(f"{where}: classes must be a list of class names; got {classes!r}")
    device_name = (
        typed("device_name", str, None, "a string")
        or getattr(config, "device_name", None)
        or socket.gethostname()
    )
    discovery = typed("discovery", bool, True, "true or false")
    from edge_detect.webhook import default_outbox_path

    outbox = settings.get("outbox")
    if outbox is None:
        outbox = str(default_outbox_path().with_name("mqtt-outbox.sqlite"))
    check_path(outbox, "outbox", where=where)
    ca_file = typed("ca_file", str, None, "a file path")
    if ca_file is not None:
        check_path(ca_file, "ca_file", where=where)
    return MqttSink(
        host,
        port,
        outbox=Path(outbox).expanduser(),
        device_name=device_name,
        classes=classes,
        username=typed("username", str, None, "a string"),
        password=password,
        tls=typed("tls", bool, False, "true or false"),
        ca_file=ca_file,
        base_topic=typed("base_topic", str, None, "a topic"),
        discovery_prefix=typed("discovery_prefix", str, "homeassistant", "a topic")
        if discovery
        else None,
        publish_timeout_s=check_number(
            settings.get("publish_timeout_s", 10.0),
            "publish_timeout_s",
            low=0.1,
            high=3600.0,
            where=where,
        ),
        keepalive_s=check_integer(
            settings.get("keepalive_s", 60), "keepalive_s", low=5, high=65535, where=where
        ),
        max_pending=check_integer(
            settings.get("max_pending", DEFAULT_MAX_PENDING),
            "max_pending",
            low=1,
            high=10_000_000,
            where=where,
        ),
    )
