#!/usr/bin/env bash
# The GPU acceptance run in one call (benchmarks/gpu_check.py says what it runs):
#   mkdir -p .device-data && cp -r ../shared/sartorius .device-data/   # the data travels inside the checkout
#   bash benchmarks/gpu_check.sh OUT                                    # OUT/report.md
#   bash benchmarks/gpu_check.sh OUT --pretrain --skip speed            # with the pretrain -> fine-tune path
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bash benchmarks/gpu_check.sh OUT [--epochs N] [--pretrain]}"
shift
PYTHONUNBUFFERED=1 exec python -m benchmarks.gpu_check --out "$OUT" "$@"
