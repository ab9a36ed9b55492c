"""Secrets in the config: given as a value, a file or an environment variable, never shown.

Every output that needs a secret (the webhook signing secret, the MQTT password) reads it through
:func:`read_secret`, so the three ways of giving it, and the messages when it is wrong, are the
same everywhere::

    secret = "whsec_..."                          # in the file (keep the file private)
    secret_file = "/etc/edge-detect/hook.secret"  # e.g. a systemd credential
    secret_env = "HOOK_SECRET"                    # from the service's environment

Messages name the key and the file or variable, never the value (a near-miss secret is still a
secret).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_detect.errors import ConfigError
from edge_detect.strict import check_path, shown

__all__ = ["MAX_SECRET_FILE_BYTES", "read_secret", "secret_keys"]

MAX_SECRET_FILE_BYTES = 64 * 1024
"""A secret file larger than this is the wrong file (a key is tens of bytes)."""


def secret_keys(key: str) -> tuple[str, str, str]:
    """The three keys that may give the secret ``key``: value, ``_file``, ``_env``."""
    return key, f"{key}_file", f"{key}_env"


def read_secret(settings: Mapping[str, Any], key: str, *, where: str) -> str | None:
    """The secret ``key`` of a config table, from its value, ``<key>_file`` or ``<key>_env``.

    Returns None when none of the three is given. A file's content is stripped of surrounding
    whitespace (a trailing newline is normal).

    Raises
    ------
    ConfigError
        More than one given, a value that is not a string, an unreadable, non-UTF-8 or empty
        file, an unset or empty variable. The message never contains the secret.
    """
    value_key, file_key, env_key = secret_keys(key)
    given = [k for k in (value_key, file_key, env_key) if k in settings]
    if len(given) > 1:
        raise ConfigError(
            f"{where}: give only one of {value_key}, {file_key}, {env_key}; got {given}"
        )
    if not given:
        return None
    if value_key in settings:
        value = settings[value_key]
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {value_key} must be a string (value not shown)")
        secret = value
    elif file_key in settings:
        secret = _from_file(settings[file_key], file_key, where)
    else:
        name = settings[env_key]
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"{where}: {env_key} must name an environment variable; got {shown(name)}"
            )
        found = os.environ.get(name)
        if found is None:
            raise ConfigError(f"{where}: environment variable {name!r} ({env_key}) is not set")
        secret = found.strip()
    if not secret:
        raise ConfigError(f"{where}: the {key} given by {given[0]} is empty")
    return secret


def _from_file(path_value: Any, file_key: str, where: str) -> str:
    path = Path(check_path(path_value, file_key, where=where)).expanduser()
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot read {file_key} {path_value!r}: {exc.strerror or exc}"
        ) from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ConfigError(
            f"{where}: {file_key} {path_value!r} is larger than {MAX_SECRET_FILE_BYTES} bytes; "
            "expected a file holding only the secret"
        )
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {file_key} {path_value!r} is not UTF-8 text") from None
