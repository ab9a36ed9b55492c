#!/usr/bin/env bash
# Proof on the Raspberry Pi's architecture, on an x86 workstation: build a minimal arm64 Debian
# root, install edge-detect into it with deploy/install.sh from aarch64 wheels, run the detector
# on the bundled demo recording under qemu-user-static, and check that its alerts equal the x86
# run's (same classes in the same order; timestamps and ids differ by nature).
#
# Needs root, network to a Debian mirror and PyPI, and:
#   apt-get install debootstrap qemu-user-static binfmt-support
# Takes a few minutes (the root is cached in the work directory and reused). Not run in CI.
# qemu's speed says nothing about a Pi's: this checks correctness, not real time.
#
# Usage: sudo deploy/arm64_check.sh [--input FILE.wav] [--model FILE.onnx] [--config FILE.toml]
#        [--workdir DIR] [--suite SUITE] [--mirror URL] [--only-root] [--fresh]
#   --input   the recording (default: the bundled demo, edge_detect/assets/demo.wav)
#   --model   the model (default: the one bundled in the package)
#   --config  runtime config for both runs (default: the config install.sh wrote in the root)
# Exit code 0 when both runs give the same alerts (classes, in order), 1 otherwise.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CHECKOUT="$(dirname "$HERE")"
WORKDIR="/var/tmp/edge-detect-arm64"
SUITE="bookworm"
MIRROR="http://deb.debian.org/debian"
ONLY_ROOT=0
FRESH=0
INPUT="$CHECKOUT/edge_detect/assets/demo.wav"
MODEL=""
CONFIG=""
# Packages the root needs beyond minbase: what install.sh would install (so it runs offline
# inside the root), plus passwd for useradd.
ROOT_PACKAGES="python3,python3-venv,libportaudio2,passwd,ca-certificates"

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
say() { printf 'arm64-check: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --workdir) WORKDIR="$2"; shift 2 ;;
    --suite) SUITE="$2"; shift 2 ;;
    --mirror) MIRROR="$2"; shift 2 ;;
    --input) INPUT="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --only-root) ONLY_ROOT=1; shift ;;
    --fresh) FRESH=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot); run it with sudo"
for tool in debootstrap chroot; do
  command -v "$tool" >/dev/null || die "'$tool' not found: apt-get install debootstrap"
done
QEMU="$(command -v qemu-aarch64-static || true)"
[ -n "$QEMU" ] || die "qemu-aarch64-static not found: apt-get install qemu-user-static binfmt-support"
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  # binfmt_misc may simply not be mounted (containers); try once before giving up.
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
  command -v update-binfmts >/dev/null && update-binfmts --enable qemu-aarch64 || true
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] \
  || die "arm64 binaries cannot run here: no qemu-aarch64 binfmt entry (apt-get install binfmt-support qemu-user-static)"

ROOT="$WORKDIR/root"
WHEELS="$WORKDIR/wheels"
MARKER="$ROOT/.edge-detect-arm64-root-ok"
mkdir -p "$WORKDIR"

MOUNTED=""
cleanup() {
  # Unmount what we mounted, innermost first. /sys is never mounted: onnxruntime crashes under
  # qemu when it can read the host's CPU topology there.
  for m in $MOUNTED; do umount -l "$m" 2>/dev/null || true; done
}
trap cleanup EXIT

mount_proc() {
  if ! mountpoint -q "$ROOT/proc"; then
    mount -t proc proc "$ROOT/proc"
    MOUNTED="$ROOT/proc $MOUNTED"
  fi
}

# The binfmt entry's interpreter path (flags without F) must exist inside the root as well.
install_qemu() {
  local interp
  interp="$(sed -n 's/^interpreter //p' /proc/sys/fs/binfmt_misc/qemu-aarch64)"
  install -D -m 0755 "$QEMU" "$ROOT/usr/bin/qemu-aarch64-static"
  if [ -n "$interp" ] && [ "$interp" != /usr/bin/qemu-aarch64-static ]; then
    install -D -m 0755 "$QEMU" "$ROOT$interp"
  fi
}

build_root() {
  if [ "$FRESH" = 1 ] && [ -d "$ROOT" ]; then
    say "removing the old root $ROOT"
    cleanup
    rm -rf --one-file-system "$ROOT"
  fi
  if [ -f "$MARKER" ]; then
    say "reusing the arm64 root $ROOT (--fresh rebuilds it)"
    install_qemu
    return
  fi
  rm -rf --one-file-system "$ROOT"
  say "debootstrap $SUITE arm64 into $ROOT (a few minutes)"
  debootstrap --arch=arm64 --variant=minbase --foreign --include="$ROOT_PACKAGES" \
    "$SUITE" "$ROOT" "$MIRROR" >"$WORKDIR/debootstrap.log" 2>&1 \
    || die "debootstrap (first stage) failed; see $WORKDIR/debootstrap.log"
  install_qemu
  chroot "$ROOT" /debootstrap/debootstrap --second-stage >>"$WORKDIR/debootstrap.log" 2>&1 \
    || die "debootstrap (second stage) failed; see $WORKDIR/debootstrap.log"
  [ "$(chroot "$ROOT" uname -m)" = aarch64 ] || die "the root does not run as aarch64"
  touch "$MARKER"
}

build_root
say "root ready: $(chroot "$ROOT" uname -m), $(chroot "$ROOT" python3 --version)"
[ "$ONLY_ROOT" = 1 ] && exit 0

[ -f "$INPUT" ] || die "no recording at $INPUT: pass --input FILE.wav (and --model FILE.onnx)"
[ -z "$MODEL" ] || [ -f "$MODEL" ] || die "no model at $MODEL"
[ -z "$CONFIG" ] || [ -f "$CONFIG" ] || die "no config at $CONFIG"
HOST_PY="${PYTHON:-python3}"
"$HOST_PY" -m pip --version >/dev/null 2>&1 || die "'$HOST_PY -m pip' does not work: set PYTHON to an interpreter with pip"

# --- wheels: the checkout as one wheel; aarch64 dependencies, then the same versions for x86 ----
ROOT_PY_TAG="$(chroot "$ROOT" python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
HOST_PY_VER="$("$HOST_PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
rm -rf "$WHEELS" "$WORKDIR/src"
mkdir -p "$WHEELS/aarch64" "$WHEELS/x86" "$WORKDIR/src"
# Build from a copy: the checkout's own build/ folder stays out of it.
cp -r "$CHECKOUT/pyproject.toml" "$CHECKOUT/README.md" "$CHECKOUT/edge_detect" "$WORKDIR/src/"
find "$WORKDIR/src" -name __pycache__ -prune -exec rm -rf {} +
say "building the edge-detect wheel"
"$HOST_PY" -m pip wheel -q --no-deps -w "$WHEELS" "$WORKDIR/src" >"$WORKDIR/pip.log" 2>&1 \
  || die "building the wheel failed; see $WORKDIR/pip.log"
WHEEL="$(ls "$WHEELS"/edge_detect-*.whl)"
cp "$WHEEL" "$WHEELS/aarch64/"
cp "$WHEEL" "$WHEELS/x86/"
say "downloading aarch64 wheels for CPython $ROOT_PY_TAG"
"$HOST_PY" -m pip download -q --only-binary=:all: --platform manylinux2014_aarch64 \
  --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform linux_aarch64 \
  --python-version "$ROOT_PY_TAG" --implementation cp -d "$WHEELS/aarch64" "$WHEEL" \
  >>"$WORKDIR/pip.log" 2>&1 || die "downloading aarch64 wheels failed; see $WORKDIR/pip.log"
# Same versions on both sides: the comparison is then about the architecture, nothing else.
find "$WHEELS/aarch64" -name '*.whl' -printf '%f\n' \
  | sed -n 's/^\([^-]*\)-\([^-]*\)-.*\.whl$/\1==\2/p' | grep -v '^edge_detect==' \
  >"$WHEELS/versions.txt"
"$HOST_PY" -m pip download -q --only-binary=:all: --python-version "$HOST_PY_VER" \
  -c "$WHEELS/versions.txt" -d "$WHEELS/x86" "$WHEEL" >>"$WORKDIR/pip.log" 2>&1 \
  || die "downloading x86 wheels of the same versions failed; see $WORKDIR/pip.log"
say "versions: $(tr '\n' ' ' <"$WHEELS/versions.txt")"

# --- arm64: install with deploy/install.sh inside the root, as on a Pi -------------------------
STAGE="$ROOT/tmp/edge-detect-check"
rm -rf "$STAGE"
mkdir -p "$STAGE"
cp -r "$HERE" "$STAGE/deploy"
cp -r "$WHEELS/aarch64" "$STAGE/wheels"
cp "$INPUT" "$STAGE/input.wav"
[ -z "$MODEL" ] || cp "$MODEL" "$STAGE/model.onnx"
[ -z "$CONFIG" ] || cp "$CONFIG" "$STAGE/config.toml"
chmod -R a+rX "$STAGE"
mount_proc
say "arm64: deploy/install.sh inside the root (under qemu: a few minutes)"
# A clean environment, as on a Pi: nothing of this machine's pip settings leaks in.
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  /bin/bash /tmp/edge-detect-check/deploy/install.sh \
  --source "/tmp/edge-detect-check/wheels/$(basename "$WHEEL")" \
  --wheelhouse /tmp/edge-detect-check/wheels >"$WORKDIR/install-arm64.log" 2>&1 \
  || { cat "$WORKDIR/install-arm64.log" >&2; die "install.sh failed in the arm64 root"; }
sed 's/^/  /' "$WORKDIR/install-arm64.log" >&2

run_args() {  # the run's arguments, with the given folder holding input/model/config
  local dir="$1" config="$2"
  printf '%s\n' run --config "$config" --input "$dir/input.wav"
  [ -z "$MODEL" ] || printf '%s\n' --model "$dir/model.onnx"
}
ROOT_CONFIG=/etc/edge-detect/config.toml
[ -z "$CONFIG" ] || ROOT_CONFIG=/tmp/edge-detect-check/config.toml
mapfile -t ARM_ARGS < <(run_args /tmp/edge-detect-check "$ROOT_CONFIG")
say "arm64: running the detector as user edge-detect"
start=$(date +%s)
# Numeric ids from the root's own account files (this machine has no such user).
RUN_AS="$(awk -F: '$1 == "edge-detect" { print $3 ":" $4 }' "$ROOT/etc/passwd")"
[ -n "$RUN_AS" ] || die "install.sh did not create the user edge-detect in the root"
chroot --userspec="$RUN_AS" "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp \
  /opt/edge-detect/venv/bin/edge-detect "${ARM_ARGS[@]}" \
  >"$WORKDIR/alerts-arm64.jsonl" 2>"$WORKDIR/run-arm64.log" \
  || { cat "$WORKDIR/run-arm64.log" >&2; die "the detector failed in the arm64 root"; }
say "arm64: done in $(( $(date +%s) - start )) s (qemu emulation; says nothing about a Pi's speed)"

# --- x86: the same wheel and versions in a venv on this machine -------------------------------
X86_VENV="$WORKDIR/x86-venv"
rm -rf "$X86_VENV"
"$HOST_PY" -m venv "$X86_VENV"
"$X86_VENV/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$WHEELS/x86" \
  "$WHEEL" >>"$WORKDIR/pip.log" 2>&1 || die "x86 install failed; see $WORKDIR/pip.log"
X86_CONFIG="${CONFIG:-$ROOT/etc/edge-detect/config.toml}"
mapfile -t X86_ARGS < <(run_args "$STAGE" "$X86_CONFIG")
say "x86: running the detector"
"$X86_VENV/bin/edge-detect" "${X86_ARGS[@]}" >"$WORKDIR/alerts-x86.jsonl" 2>"$WORKDIR/run-x86.log" \
  || { cat "$WORKDIR/run-x86.log" >&2; die "the detector failed on x86"; }

# --- compare: classes in order must be equal; times and ids differ by nature -------------------
"$HOST_PY" - "$WORKDIR/alerts-x86.jsonl" "$WORKDIR/alerts-arm64.jsonl" <<'EOF'
import json
import sys


def alerts(path):
    with open(path, encoding="utf-8") as f:
        return [m for m in map(json.loads, filter(str.strip, f)) if m.get("type") == "alert"]


x86, arm = alerts(sys.argv[1]), alerts(sys.argv[2])
print(f"{'#':>3}  {'x86 class':12} {'offset_s':>9} {'score':>8}   "
      f"{'arm64 class':12} {'offset_s':>9} {'score':>8}")
for i in range(max(len(x86), len(arm))):
    cells = []
    for side in (x86, arm):
        if i < len(side):
            a = side[i]
            offset = a.get("offset_s", float("nan"))
            cells.append(f"{a['class']:12} {offset:9.3f} {a['score']:8.5f}")
        else:
            cells.append(f"{'-':12} {'':9} {'':8}")
    print(f"{i + 1:>3}  {cells[0]}   {cells[1]}")
same = [a["class"] for a in x86] == [a["class"] for a in arm]
if x86 and len(x86) == len(arm):
    diff = max(abs(a["score"] - b["score"]) for a, b in zip(x86, arm))
    print(f"largest score difference between the architectures: {diff:.2e}")
verdict = "PASS" if same and x86 else "FAIL"
print(f"arm64-check: {verdict}: {len(x86)} alert(s) on x86, {len(arm)} on arm64, "
      f"classes in order {'equal' if same else 'DIFFERENT'}"
      + ("" if x86 else " (no alerts at all: nothing was compared)"))
sys.exit(0 if verdict == "PASS" else 1)
EOF
