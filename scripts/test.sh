#!/usr/bin/env bash
# Sets up, then runs the checks CI runs: stubs current, ruff, mypy, the default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# PostgreSQL on 127.0.0.1:5432 backs the integration tests; start it if it is installed but down.
if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check backend encoders tests bench
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"
