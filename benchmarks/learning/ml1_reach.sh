#!/usr/bin/env bash
# Meta-World ML1 reach-v3 on a 2-core CPU (about an hour): curves in runs/learning/ml1_reach/.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/learning/run_name.sh
train_and_summarize ml1_reach --benchmark reach-v3 --configs configs/metaworld/ml1_cpu.gin configs/metaworld/ml1_recipe.gin -- "$@"
