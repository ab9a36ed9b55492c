#!/usr/bin/env python3
"""Run a command under the system-call policy of deploy/edge-detect.service, without systemd.

Reads ``SystemCallFilter=``, ``SystemCallErrorNumber=`` and ``RestrictAddressFamilies=`` from the
unit, expands the ``@groups`` with ``systemd-analyze syscall-filter`` (so the sets are those of
the systemd that will run the unit), loads the same seccomp filter into this process (which also
sets no_new_privs, like ``NoNewPrivileges=yes``) and executes the command. A call the unit would
refuse then fails here the same way, so a test can show that the detector runs inside it.

Needs libseccomp's Python binding (Debian: ``apt-get install python3-seccomp``) and
``systemd-analyze``; run it with the system's python3.

Usage: python3 deploy/seccomp_run.py [--unit FILE] -- COMMAND [ARGS...]
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent / "edge-detect.service"
LARGEST_FAMILY = 64
"""Address families above AF_MAX (46 on Linux 6.x) do not exist; deny a margin beyond it."""


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """``key -> [value, ...]`` of the unit's [Service] section, in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    result: set[str] = set()
    pending = list(names)
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.startswith("@"):
            pending.extend(groups[name])
        else:
            result.add(name)
    return result


def allowed_syscalls(settings: dict[str, list[str]], groups: dict[str, list[str]]) -> set[str]:
    """systemd's semantics: allow lists add up, ``~`` lists remove from them."""
    allow: set[str] = set()
    deny: set[str] = set()
    for value in settings.get("SystemCallFilter", []):
        if value.startswith("~"):
            deny |= expand(value[1:].split(), groups)
        else:
            allow |= expand(value.split(), groups)
    if not allow:
        raise SystemExit("the unit has no SystemCallFilter allow list; nothing to emulate")
    return allow - deny


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unit", type=Path, default=UNIT)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    try:
        import seccomp
    except ImportError:
        raise SystemExit(
            "needs libseccomp's Python binding: apt-get install python3-seccomp"
        ) from None

    settings = unit_settings(args.unit)
    allowed = allowed_syscalls(settings, syscall_groups())
    error = getattr(errno, settings.get("SystemCallErrorNumber", ["EPERM"])[-1])
    families = [
        getattr(socket, name)
        for value in settings.get("RestrictAddressFamilies", [])
        for name in value.split()
    ]

    flt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(error))
    for name in sorted(allowed - {"socket"}):
        try:
            flt.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError, OSError):
            pass  # a name systemd knows that this architecture lacks
    if "socket" in allowed:
        if families:
            for family in range(LARGEST_FAMILY):
                action = seccomp.ALLOW if family in families else seccomp.ERRNO(errno.EAFNOSUPPORT)
                flt.add_rule(action, "socket", seccomp.Arg(0, seccomp.EQ, family))
        else:
            flt.add_rule(seccomp.ALLOW, "socket")
    flt.load()
    print(
        f"seccomp_run: {len(allowed)} system calls allowed; address families: "
        + (" ".join(socket.AddressFamily(f).name for f in families) or "all"),
        file=sys.stderr,
    )
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
