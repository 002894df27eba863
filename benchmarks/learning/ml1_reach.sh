#!/usr/bin/env bash
# Meta-World ML1 reach-v3 on a 2-core CPU (about an hour): curves in runs/learning/ml1_reach/.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/learning/run_name.sh
run=$(run_name ml1_reach "$@")
python examples/metaworld.py --benchmark reach-v3 --configs configs/metaworld/ml1_cpu.gin \
  --buffer_dir runs/learning --run_name ml1_reach "$@"
python benchmarks/learning/summarize.py "runs/learning/$run"
