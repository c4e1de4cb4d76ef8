#!/usr/bin/env bash
# GPU check (benchmarks/gpu_check.py): train-step ratio vs timm per anchor, sampled-network img/s eager
# and compiled, compile warm-up, sweep vs one pass per network, latency per anchor, peak memory.
# About 3 minutes on one H100/H200 (its parts took 86 + 59 + 41 s on an H200); no network, no
# pretrained weights. Writes results/benchmarks_gpu.md.
#   bash benchmarks/gpu_check.sh [--modes default reduce-overhead] [--parts anchor sampled sweep latency]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
