#!/usr/bin/env bash
# The README's second command: set up (as scripts/setup.sh) and run the whole test suite:
# formatting, lint, types, then pytest against real Mosquitto and nats-server processes.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k codec`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
echo "== ruff format --check"
.venv/bin/ruff format --check .
echo "== ruff check"
.venv/bin/ruff check .
echo "== mypy (strict)"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest "$@"
