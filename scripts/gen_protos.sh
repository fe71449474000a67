#!/usr/bin/env bash
# Regenerates the gRPC stubs from proto/. Generated files are never edited by hand;
# tests/unit/test_stubs_current.py fails when they are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
# protoc plugins (protoc-gen-mypy) live beside the interpreter.
export PATH="$(dirname "$(command -v "$PY")"):$PATH"
OUT=${1:-.}
# The virtual include path makes the generated modules import each other through
# backend.transport.grpc.generated.* instead of a bare top-level package.
"$PY" -m grpc_tools.protoc \
  -Ibackend/transport/grpc/generated=proto \
  --python_out="$OUT" --grpc_python_out="$OUT" --mypy_out="$OUT" \
  proto/product_search/v1/*.proto
