#!/usr/bin/env bash
# Install edge-detect as a hardened systemd service on Raspberry Pi OS (64-bit) or Debian.
# Safe to run again: it changes only what differs (that is also how you update).
#
# Usage:
#   sudo deploy/install.sh [OPTIONS]                 install, or update in place
#   sudo deploy/install.sh --uninstall [--purge]     remove (keeps config and data unless --purge)
#
# Options:
#   --source SPEC     what pip installs: a checkout folder, a wheel file or a requirement
#                     (default: this checkout; edge-detect is not published on PyPI)
#   --wheelhouse DIR  install offline from the wheels in DIR (pip --no-index --find-links DIR)
#   --config FILE     the first config to install (default: deploy/edge-detect.toml, the
#                     commented example); an existing config is never overwritten
#   --upgrade         let pip upgrade a requirement that is already satisfied
#   --python PY       interpreter that creates the venv (default: python3)
#   --root DIR        install under DIR instead of / (tests, images); implies --no-apt and
#                     does not start anything; the user is created in DIR/etc/passwd
#   --no-apt          do not install system packages
#   --no-user         do not create the service user
#   --no-systemctl    do not run systemctl at all
#   --no-start        enable the service but do not (re)start it
#   --uninstall       stop and remove the service and the venv; keep config, data and user
#   --purge           with --uninstall: also remove the config, the data and the user
#   -h, --help        this text
# DESTDIR=DIR in the environment is the same as --root DIR.
set -euo pipefail

NAME="edge-detect"
SERVICE_USER="edge-detect"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CHECKOUT="$(dirname "$HERE")"
APT_PACKAGES="python3 python3-venv libportaudio2 ca-certificates"
MIN_PYTHON="3.10"

ROOT="${DESTDIR:-}"
SOURCE=""
CONFIG_TEMPLATE=""
WHEELHOUSE=""
UPGRADE=0
PYTHON="python3"
DO_APT=1
DO_USER=1
DO_SYSTEMCTL=1
DO_START=1
ACTION="install"
PURGE=0

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
say() { printf '%s: %s\n' "$NAME-install" "$*"; }
die() { printf '%s: error: %s\n' "$NAME-install" "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --source) SOURCE="${2:?--source needs a value}"; shift 2 ;;
    --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a folder}"; shift 2 ;;
    --config) CONFIG_TEMPLATE="${2:?--config needs a file}"; shift 2 ;;
    --upgrade) UPGRADE=1; shift ;;
    --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
    --root) ROOT="${2:?--root needs a folder}"; shift 2 ;;
    --no-apt) DO_APT=0; shift ;;
    --no-user) DO_USER=0; shift ;;
    --no-systemctl) DO_SYSTEMCTL=0; shift ;;
    --no-start) DO_START=0; shift ;;
    --uninstall) ACTION="uninstall"; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1' (see --help)" ;;
  esac
done
[ "$PURGE" = 0 ] || [ "$ACTION" = uninstall ] || die "--purge only goes with --uninstall"

# Temporary files and folders of this run, removed however it ends.
CLEANUP=()
cleanup() { [ "${#CLEANUP[@]}" = 0 ] || rm -rf -- "${CLEANUP[@]}"; }
trap cleanup EXIT

if [ -n "$ROOT" ]; then
  ROOT="$(realpath -m "$ROOT")"
  [ "$ROOT" != / ] || ROOT=""
fi
if [ -n "$ROOT" ]; then
  DO_APT=0
  DO_START=0
fi

# Paths as the running system sees them, and where this run writes them.
APP_DIR="/opt/$NAME"
VENV="$APP_DIR/venv"
CONF_DIR="/etc/$NAME"
CONF="$CONF_DIR/config.toml"
STATE_DIR="/var/lib/$NAME"
UNIT_NAME="$NAME.service"
UNIT="/etc/systemd/system/$UNIT_NAME"
R_APP_DIR="$ROOT$APP_DIR"
R_VENV="$ROOT$VENV"
R_CONF_DIR="$ROOT$CONF_DIR"
R_CONF="$ROOT$CONF"
R_STATE_DIR="$ROOT$STATE_DIR"
R_UNIT="$ROOT$UNIT"
FINGERPRINT_FILE="$R_APP_DIR/installed-source.sha256"

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1
[ "$IS_ROOT" = 1 ] || [ -n "$ROOT" ] || die "needs root to install system-wide: run it with sudo"

# --- architecture ---------------------------------------------------------------------------
check_architecture() {
  local machine userland
  machine="${EDGE_DETECT_MACHINE:-$(uname -m)}"
  userland="${EDGE_DETECT_DPKG_ARCH:-$(dpkg --print-architecture 2>/dev/null || true)}"
  case "$machine:$userland" in
    armv6l:*|armv7l:*|armv8l:*|arm:*|*:armhf|*:armel)
      die "this is a 32-bit ARM system (kernel $machine, packages ${userland:-unknown}).
  onnxruntime publishes no 32-bit ARM wheels (neither does numpy), so edge-detect cannot run here.
  Flash 'Raspberry Pi OS (64-bit)' with Raspberry Pi Imager (Pi 3, 4, 5, Zero 2 W) and run this again." ;;
  esac
}

# --- system packages ------------------------------------------------------------------------
install_packages() {
  [ "$DO_APT" = 1 ] || { say "system packages: skipped"; return; }
  command -v dpkg >/dev/null || die "dpkg not found: this installer is for Debian and Raspberry Pi OS"
  local missing="" p
  for p in $APT_PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
  done
  if [ -z "$missing" ]; then
    say "system packages: already installed ($APT_PACKAGES)"
    return
  fi
  say "system packages: installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  apt-get install -y -qq --no-install-recommends $missing
}

check_python() {
  command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found: apt-get install python3 python3-venv"
  "$PYTHON" - "$MIN_PYTHON" <<'EOF' || die "edge-detect needs Python >= $MIN_PYTHON; '$PYTHON' is older (Raspberry Pi OS bookworm or newer has it)"
import sys
need = tuple(int(x) for x in sys.argv[1].split("."))
sys.exit(0 if sys.version_info[:2] >= need else 1)
EOF
}

# --- user -----------------------------------------------------------------------------------
# With --root the accounts live in ROOT/etc/{passwd,group}: useradd --prefix writes there, and we
# look ids up there, never in this machine's databases.
user_exists() {
  if [ -n "$ROOT" ]; then grep -q "^$SERVICE_USER:" "$ROOT/etc/passwd" 2>/dev/null
  else getent passwd "$SERVICE_USER" >/dev/null; fi
}
group_exists() {
  if [ -n "$ROOT" ]; then grep -q "^$1:" "$ROOT/etc/group" 2>/dev/null
  else getent group "$1" >/dev/null; fi
}
group_id() {
  if [ -n "$ROOT" ]; then awk -F: -v g="$1" '$1 == g { print $3 }' "$ROOT/etc/group" 2>/dev/null || true
  else getent group "$1" | cut -d: -f3 || true; fi
}
user_id() {
  if [ -n "$ROOT" ]; then awk -F: -v u="$1" '$1 == u { print $3 }' "$ROOT/etc/passwd" 2>/dev/null || true
  else getent passwd "$1" | cut -d: -f3 || true; fi
}
in_audio_group() {
  local members
  if [ -n "$ROOT" ]; then members="$(awk -F: '$1 == "audio" { print $4 }' "$ROOT/etc/group" 2>/dev/null || true)"
  else members="$(getent group audio | cut -d: -f4 || true)"; fi
  case ",$members," in *",$SERVICE_USER,"*) return 0 ;; *) return 1 ;; esac
}

# An empty --root has no account databases, and useradd/groupadd --prefix cannot lock files that
# do not exist ("cannot lock .../etc/group"): start them empty, as a fresh system's would be
# before its first account.
ensure_account_files() {
  local f created=""
  mkdir -p "$ROOT/etc"
  for f in passwd group shadow gshadow; do
    [ -e "$ROOT/etc/$f" ] && continue
    case "$f" in
      shadow|gshadow) install -m 0640 /dev/null "$ROOT/etc/$f" ;;
      *) install -m 0644 /dev/null "$ROOT/etc/$f" ;;
    esac
    created="$created $f"
  done
  [ -z "$created" ] || say "accounts: created empty$created in $ROOT/etc"
}

create_user() {
  [ "$DO_USER" = 1 ] || { say "service user: skipped"; return; }
  [ "$IS_ROOT" = 1 ] || { say "service user: skipped (not root)"; return; }
  local prefix=()
  [ -z "$ROOT" ] || prefix=(--prefix "$ROOT")
  [ -z "$ROOT" ] || ensure_account_files
  if ! group_exists audio; then
    groupadd "${prefix[@]}" --system audio
    say "group audio: created"
  fi
  if user_exists; then
    say "service user $SERVICE_USER: exists"
  else
    useradd "${prefix[@]}" --system --user-group --groups audio --home-dir "$STATE_DIR" \
      --no-create-home --shell /usr/sbin/nologin --comment "edge-detect sound detector" \
      "$SERVICE_USER"
    say "service user $SERVICE_USER: created (groups: $SERVICE_USER, audio)"
  fi
  if ! in_audio_group; then
    usermod "${prefix[@]}" --append --groups audio "$SERVICE_USER"
    say "service user $SERVICE_USER: added to group audio"
  fi
}

# Owner and group for files the service reads: root:edge-detect when that group exists.
owner_spec() {
  local gid
  gid="$(group_id "$SERVICE_USER")"
  if [ "$IS_ROOT" = 1 ] && [ -n "$gid" ]; then echo "0:$gid"; fi
}

# --- the runtime in a venv ------------------------------------------------------------------
# edge-detect is not on PyPI: without --source, the checkout install.sh lives in is installed.
default_source() {
  if [ -f "$CHECKOUT/pyproject.toml" ] && grep -q '^name = "edge-detect"' "$CHECKOUT/pyproject.toml"; then
    echo "$CHECKOUT"
  else
    die "install.sh is not inside an edge-detect checkout ($CHECKOUT has no edge-detect pyproject.toml) and no --source was given; edge-detect is not published on PyPI. Run the install.sh of a checkout (copy or clone the repository onto this machine), or pass --source with a checkout folder or a wheel (pip wheel --no-deps -w dist . in a checkout)"
  fi
}

# A fingerprint of what would be installed, so a second run with the same source changes
# nothing. Empty for a PyPI requirement: pip itself decides whether it is satisfied.
source_fingerprint() {
  local src="$1"
  if [ -d "$src" ]; then
    (cd "$src" && find pyproject.toml edge_detect -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
      -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
  elif [ -f "$src" ]; then
    sha256sum "$src" | cut -d' ' -f1
  fi
}

RUNTIME_CHANGED=0
install_runtime() {
  local src fingerprint pip_args=()
  src="${SOURCE:-$(default_source)}"
  # A folder or file given relative to the caller's directory: make it absolute for pip.
  if [ -e "$src" ]; then src="$(cd "$(dirname "$src")" && pwd)/$(basename "$src")"; fi
  if [ ! -x "$R_VENV/bin/python" ]; then
    check_python
    mkdir -p "$R_APP_DIR"
    "$PYTHON" -m venv "$R_VENV" \
      || die "could not create a venv with '$PYTHON -m venv': apt-get install python3-venv"
    say "venv: created $VENV"
    RUNTIME_CHANGED=1
  fi
  fingerprint="$(source_fingerprint "$src")"
  if [ -n "$fingerprint" ] && [ -f "$FINGERPRINT_FILE" ] \
     && [ "$(cat "$FINGERPRINT_FILE")" = "$fingerprint" ] && [ -x "$R_VENV/bin/$NAME" ]; then
    say "runtime: up to date ($src)"
  else
    pip_args=(install --quiet --disable-pip-version-check --no-input --prefer-binary)
    [ -z "$WHEELHOUSE" ] || pip_args+=(--no-index --find-links "$WHEELHOUSE")
    [ "$UPGRADE" = 0 ] || pip_args+=(--upgrade)
    say "runtime: installing $src"
    if [ -d "$src" ]; then
      # Build from a copy: pip would leave root-owned build/ and *.egg-info folders in the
      # user's checkout, which later break 'pip install -e .' there.
      BUILD_COPY="$(mktemp -d)"
      CLEANUP+=("$BUILD_COPY")
      tar -C "$src" --exclude=.git --exclude=.venv --exclude=build --exclude=dist \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=runs --exclude=.cache \
        -cf - . | tar -C "$BUILD_COPY" -xf -
      "$R_VENV/bin/pip" "${pip_args[@]}" "$BUILD_COPY"
    else
      "$R_VENV/bin/pip" "${pip_args[@]}" "$src"
    fi
    [ -z "$fingerprint" ] || echo "$fingerprint" >"$FINGERPRINT_FILE"
    RUNTIME_CHANGED=1
  fi
  verify_runtime
}

# The device install must hold the runtime and never torch (it is hundreds of MB and the
# runtime does not use it); a dependency that drags it in is a bug to catch here.
verify_runtime() {
  "$R_VENV/bin/python" - <<'EOF' || die "the runtime in $VENV does not import (see above)"
import importlib.util
import sys

import edge_detect

if importlib.util.find_spec("torch") is not None:
    sys.exit("torch is installed in the device venv; the runtime must not depend on it")
print(f"edge-detect-install: runtime: edge_detect {edge_detect.__version__} imports, no torch")
EOF
  "$R_VENV/bin/$NAME" --version >/dev/null || die "'$VENV/bin/$NAME --version' failed"
}

# --- files ----------------------------------------------------------------------------------
# Copy SRC to DEST with MODE (and OWNER uid:gid) only when the content differs; says what it did.
# Returns 0 when it wrote, 1 when DEST was already up to date.
put_file() {
  local src="$1" dest="$2" mode="$3" owner="${4:-}"
  if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
    chmod "$mode" "$dest"
    [ -z "$owner" ] || chown "$owner" "$dest"
    return 1
  fi
  mkdir -p "$(dirname "$dest")"
  install -m "$mode" "$src" "$dest.tmp.$$"
  [ -z "$owner" ] || chown "$owner" "$dest.tmp.$$"
  mv -f "$dest.tmp.$$" "$dest"
  return 0
}

config_template() {
  local t="${CONFIG_TEMPLATE:-$HERE/$NAME.toml}"
  [ -f "$t" ] || die "the config $t is missing: run install.sh from a checkout or an unpacked release, or give --config FILE"
  echo "$t"
}

# The config a fresh install gets: the example, plus the local metrics endpoint that
# 'edge-detect status' reads (unless the example configures metrics itself or --config was given).
initial_config() {
  local template
  template="$(config_template)"
  cat "$template"
  if [ -z "$CONFIG_TEMPLATE" ] && ! grep -q '^\[sinks\.metrics\]' "$template"; then
    cat <<'EOF'

# Added by deploy/install.sh: health and metrics for `edge-detect status` and Prometheus, on this
# machine only ("0.0.0.0:9750" opens them to the network). Remove the table to turn them off.
[sinks.metrics]
listen = "127.0.0.1:9750"
EOF
  fi
}

install_config() {
  local owner template
  owner="$(owner_spec)"
  template="$(mktemp)"
  CLEANUP+=("$template")
  initial_config >"$template"
  mkdir -p "$R_CONF_DIR"
  chmod 0750 "$R_CONF_DIR"
  [ -z "$owner" ] || chown "$owner" "$R_CONF_DIR"
  if [ -f "$R_CONF" ]; then
    # Never overwrite the user's config; keep its permissions tight (it may hold webhook
    # secrets) and leave the new example beside it when it changed.
    chmod 0640 "$R_CONF"
    [ -z "$owner" ] || chown "$owner" "$R_CONF"
    if ! cmp -s "$template" "$R_CONF" && put_file "$template" "$R_CONF.example" 0640 "$owner"; then
      say "config: kept $CONF; the new example is $CONF.example"
    else
      say "config: kept $CONF"
    fi
  else
    put_file "$template" "$R_CONF" 0640 "$owner" || true
    local owner_text="owner unchanged: no group $SERVICE_USER"
    [ -z "$owner" ] || owner_text="owner root:$SERVICE_USER"
    say "config: wrote $CONF (mode 0640, $owner_text): edit it, then systemctl restart $NAME"
  fi
}

install_state_dir() {
  local uid gid
  mkdir -p "$R_STATE_DIR"
  chmod 0750 "$R_STATE_DIR"
  uid="$(user_id "$SERVICE_USER")"
  gid="$(group_id "$SERVICE_USER")"
  if [ "$IS_ROOT" = 1 ] && [ -n "$uid" ] && [ -n "$gid" ]; then chown "$uid:$gid" "$R_STATE_DIR"; fi
}

UNIT_CHANGED=0
install_unit() {
  if put_file "$HERE/$UNIT_NAME" "$R_UNIT" 0644; then
    say "service: installed $UNIT"
    UNIT_CHANGED=1
  else
    say "service: $UNIT up to date"
  fi
  if [ -f "$HERE/README.md" ]; then put_file "$HERE/README.md" "$R_APP_DIR/README.md" 0644 || true; fi
}

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

enable_service() {
  [ "$DO_SYSTEMCTL" = 1 ] || { say "service: systemctl skipped"; return; }
  command -v systemctl >/dev/null || { say "service: systemctl not found, not enabled"; return; }
  local sysroot=()
  [ -z "$ROOT" ] || sysroot=(--root="$ROOT")
  if ! systemd_running; then
    # Offline (an image, a chroot): enabling only creates the boot-time symlink.
    systemctl "${sysroot[@]}" enable --quiet "$UNIT_NAME"
    say "service: enabled (systemd is not running here: it starts at the next boot)"
    return
  fi
  [ "$UNIT_CHANGED" = 0 ] || systemctl daemon-reload
  systemctl enable --quiet "$UNIT_NAME"
  if [ "$DO_START" = 0 ]; then
    say "service: enabled, not started (--no-start)"
  elif systemctl is-active --quiet "$UNIT_NAME"; then
    if [ "$UNIT_CHANGED" = 1 ] || [ "$RUNTIME_CHANGED" = 1 ]; then
      systemctl restart "$UNIT_NAME"
      say "service: restarted with the new version"
    else
      say "service: running, unchanged"
    fi
  else
    if systemctl start "$UNIT_NAME" && systemctl is-active --quiet "$UNIT_NAME"; then
      say "service: started"
    else
      die "the service did not start; see: journalctl -u $NAME -n 50"
    fi
  fi
}

do_install() {
  check_architecture
  config_template >/dev/null
  [ -z "$ROOT" ] || mkdir -p "$ROOT"
  install_packages
  create_user
  install_runtime
  install_state_dir
  install_config
  install_unit
  enable_service
  say "done. Logs: journalctl -u $NAME -f   Status: $VENV/bin/$NAME status"
}

# --- uninstall ------------------------------------------------------------------------------
do_uninstall() {
  local sysroot=()
  [ -z "$ROOT" ] || sysroot=(--root="$ROOT")
  if [ "$DO_SYSTEMCTL" = 1 ] && command -v systemctl >/dev/null && [ -f "$R_UNIT" ]; then
    if systemd_running; then
      systemctl disable --now --quiet "$UNIT_NAME" || true
    else
      systemctl "${sysroot[@]}" disable --quiet "$UNIT_NAME" || true
    fi
  fi
  if [ -f "$R_UNIT" ]; then
    rm -f "$R_UNIT"
    say "service: removed $UNIT"
    if [ "$DO_SYSTEMCTL" = 1 ] && systemd_running; then systemctl daemon-reload; fi
  fi
  if [ -d "$R_APP_DIR" ]; then
    rm -rf --one-file-system "$R_APP_DIR"
    say "runtime: removed $APP_DIR"
  fi
  if [ "$PURGE" = 1 ]; then
    rm -rf --one-file-system "$R_CONF_DIR" "$R_STATE_DIR"
    say "purged: $CONF_DIR and $STATE_DIR"
    if [ "$DO_USER" = 1 ] && [ "$IS_ROOT" = 1 ] && user_exists; then
      local prefix=()
      [ -z "$ROOT" ] || prefix=(--prefix "$ROOT")
      userdel "${prefix[@]}" "$SERVICE_USER"
      say "service user $SERVICE_USER: removed"
    fi
  else
    # The user stays: it owns the kept data, and a reinstall picks up where it left off.
    say "kept: $CONF_DIR (config), $STATE_DIR (outbox, clips) and user $SERVICE_USER; --purge removes them"
  fi
}

case "$ACTION" in
  install) do_install ;;
  uninstall) do_uninstall ;;
esac
