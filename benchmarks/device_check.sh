#!/usr/bin/env bash
# One-command accelerator check: SSD300 training images/s (batch 32/64/128, bf16/fp32, XLA on/off), the
# MLPerf SSD300-ResNet34 at the largest batch,
# the input pipeline on every host core, inference latency (batch 1) and throughput (batch 64) with
# post-processing; the last line is one JSON object. Without a GPU it runs a tiny version (a minute).
# Flags go to benchmarks/device_check.py (e.g. --tiny, --batch_sizes 64, --budget_s 300).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m benchmarks.device_check "$@"
