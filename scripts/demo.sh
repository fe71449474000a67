#!/usr/bin/env bash
# Sets up, then runs the demo on the embedded default (SQLite + qdrant-edge under ./data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/prodsearch demo "$@"
