#!/usr/bin/env bash
# The README's first command: set up everything (scripts/setup.sh) and run the demo.
# Arguments go to `cairn-sim demo` (e.g. --devices 200 --rate 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cairn-sim demo "$@"
