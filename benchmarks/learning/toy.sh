#!/usr/bin/env bash
# The built-in meta-RL envs on a CPU (minutes each), fixed seeds: curves in runs/learning/{bandit,dark_room}/.
set -euo pipefail
cd "$(dirname "$0")/../.."
python examples/toy.py --env bandit --buffer_dir runs/learning --run_name bandit "$@"
python examples/toy.py --env dark_room --buffer_dir runs/learning --run_name dark_room "$@"
python benchmarks/learning/summarize.py runs/learning/bandit runs/learning/dark_room
