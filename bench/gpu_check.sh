#!/usr/bin/env bash
# One-go GPU check for the encoder: fp16 EfficientNet-Lite0 on CUDA, images/s and batch-1
# p99 latency at concurrency 1/8/32 through the dynamic batcher on prepared tensors, then end
# to end from JPEG/PNG bytes (bench.gpu_ingest: nvJPEG batched decode, GPU resize, pinned
# buffers, decode overlapped with inference) beside today's PIL-fed path and the CPU-side
# preprocessing ceiling. Installs nothing; uses the repository's venv (.venv, with the CUDA
# build of torch). Run from anywhere:
#     bash bench/gpu_check.sh [--seconds 5]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -m bench.encoding --gpu-only "$@"
exec "$PY" -m bench.gpu_ingest "$@"
