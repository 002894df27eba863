#!/usr/bin/env bash
# ML10 or ML45 on a 2-core CPU with the small CPU model (configs/metaworld/<benchmark>_cpu.gin):
# an hour or two shows which training tasks start to learn, far below the published budget; the
# published model size needs a GPU (gpu.sh). Curves in runs/learning/<benchmark>_cpu/.
# Usage: bash benchmarks/learning/cpu.sh ml10|ml45 [flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
bench="${1:?usage: cpu.sh ml10|ml45 [extra flags]}"
shift
source benchmarks/learning/run_name.sh
train_and_summarize "${bench}_cpu" --benchmark "$bench" --configs "configs/metaworld/${bench}_cpu.gin" -- "$@"
