#!/usr/bin/env bash
# ML10 or ML45 at the published model size on one GPU (days for the full budget; stop any time,
# the curves so far are in runs/learning/<benchmark>/). Usage: bash benchmarks/learning/gpu.sh ml10|ml45 [flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
bench="${1:?usage: gpu.sh ml10|ml45 [extra flags]}"
shift
source benchmarks/learning/run_name.sh
train_and_summarize "$bench" --benchmark "$bench" --configs "configs/metaworld/$bench.gin" --mixed_precision bf16 -- "$@"
