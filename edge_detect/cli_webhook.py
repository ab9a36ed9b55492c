"""``edge-detect webhook``: see the webhook endpoints an outbox knows, and enable a disabled one.

An endpoint that answered ``410 Gone`` is disabled (its messages stay queued). ``edge-detect
webhook enable NAME`` enables it again; it works while the detector runs (the running detector
notices within seconds and delivers the queue) and while it is stopped. The outbox is found from
``--outbox``, else ``[sinks.webhook] outbox`` of the config, else the default place.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from edge_detect.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["endpoint_states", "enable_endpoint", "find_outbox", "register"]

DEFAULT_CONFIG = Path("/etc/edge-detect/config.toml")
SERVICE_OUTBOX = Path("/var/lib/edge-detect/outbox.sqlite")
"""Where the installed service keeps its outbox (systemd's StateDirectory)."""
_BUSY_TIMEOUT_S = 10.0


def find_outbox(outbox: str | None = None, config: str | None = None) -> Path:
    """The outbox file to use: ``outbox``, else the config's, else the first that exists of the
    service's and this user's default. ConfigError when there is none."""
    if outbox:
        path = Path(outbox).expanduser()
    else:
        path = _from_config(config) or _default_outbox()
    if not path.is_file():
        raise ConfigError(
            f"no outbox at {path}: the detector has not run with webhooks there yet; give the "
            "outbox with --outbox PATH or the detector's config with --config TOML"
        )
    return path


def _from_config(config: str | None) -> Path | None:
    path = Path(config) if config else DEFAULT_CONFIG
    if not config and not os.access(path, os.R_OK):
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the config {path}: {exc}") from None
    table: Any = data.get("sinks", {}).get("webhook", {}) if isinstance(data, dict) else {}
    value = table.get("outbox") if isinstance(table, dict) else None
    return Path(value).expanduser() if isinstance(value, str) and value else None


def _default_outbox() -> Path:
    from edge_detect.webhook import default_outbox_path

    if "STATE_DIRECTORY" not in os.environ and SERVICE_OUTBOX.is_file():
        return SERVICE_OUTBOX
    return default_outbox_path()


def _connect(path: Path) -> sqlite3.Connection:
    # No process lock: the running detector holds it. SQLite itself keeps two processes'
    # transactions apart (WAL, busy timeout).
    try:
        return sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open the outbox {path}: {exc}") from None


def endpoint_states(path: Path) -> dict[str, str | None]:
    """Every endpoint the outbox at ``path`` knows, with why it is disabled (None: enabled)."""
    db = _connect(path)
    try:
        rows = db.execute("SELECT name, disabled_reason FROM endpoints ORDER BY name").fetchall()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path} is not a usable outbox: {exc}") from None
    finally:
        db.close()
    return {str(name): reason for name, reason in rows}


def enable_endpoint(path: Path, name: str) -> bool:
    """Enable the endpoint ``name`` in the outbox at ``path``; False if it was not disabled.
    ConfigError when the outbox does not know it (the message lists those it knows)."""
    states = endpoint_states(path)
    if name not in states:
        raise ConfigError(
            f"the outbox {path} knows no webhook endpoint {name!r}; it knows {sorted(states)}"
        )
    if states[name] is None:
        return False
    db = _connect(path)
    try:
        db.execute(
            "UPDATE endpoints SET disabled_reason=NULL, disabled_at=NULL WHERE name=?", (name,)
        )
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot update the outbox {path}: {exc}") from None
    finally:
        db.close()
    return True


def _list(args: argparse.Namespace) -> int:
    path = find_outbox(args.outbox, args.config)
    states = endpoint_states(path)
    if not states:
        print(f"the outbox {path} knows no endpoints yet")
        return 0
    for name, reason in states.items():
        print(f"{name}: {'enabled' if reason is None else 'DISABLED (' + reason + ')'}")
    return 0


def _enable(args: argparse.Namespace) -> int:
    path = find_outbox(args.outbox, args.config)
    if enable_endpoint(path, args.name):
        print(
            f"webhook {args.name} enabled in {path}; a running detector delivers its queue "
            "within seconds, a stopped one when it starts"
        )
    else:
        print(f"webhook {args.name} was not disabled")
    return 0


def register(subparsers: argparse._SubParsersAction, formatter: Any) -> None:
    """Add ``edge-detect webhook list|enable``."""
    parser = subparsers.add_parser(
        "webhook",
        help="list the webhook endpoints and enable a disabled one (after 410 Gone)",
        description=(
            "An endpoint that answered 410 Gone is disabled: its messages stay queued.\n"
            "  edge-detect webhook list\n"
            "  edge-detect webhook enable NAME    # works while the detector runs"
        ),
        formatter_class=formatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, help_text, handler in (
        ("list", "the endpoints the outbox knows and whether they are enabled", _list),
        ("enable", "enable a disabled endpoint again", _enable),
    ):
        sub = actions.add_parser(action, help=help_text, formatter_class=formatter)
        if action == "enable":
            sub.add_argument("name", help="the endpoint's name (edge-detect webhook list)")
        sub.add_argument("--outbox", help="the outbox file (default: from the config)")
        sub.add_argument(
            "--config", help=f"the detector's config (default: {DEFAULT_CONFIG}, if readable)"
        )
        sub.set_defaults(func=handler)
