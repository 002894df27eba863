#!/usr/bin/env bash
# Meta-World ML1 reach-v3 on a 2-core CPU (about an hour): curves in runs/learning/ml1_reach/.
set -euo pipefail
cd "$(dirname "$0")/../.."
run=ml1_reach
# a --run_name among the extra flags names the run to summarise
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do [[ ${args[i]} == --run_name ]] && run=${args[i + 1]}; done
python examples/metaworld.py --benchmark reach-v3 --configs configs/metaworld/ml1_cpu.gin \
  --buffer_dir runs/learning --run_name ml1_reach "$@"
python benchmarks/learning/summarize.py "runs/learning/$run"
