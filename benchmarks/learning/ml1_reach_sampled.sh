#!/usr/bin/env bash
# ML1 reach-v3 on sampled training goals, the recipe that reached ~90% held-out final-attempt success on
# 2 CPU cores (docs/RESULTS.md): 225 epochs at 80 updates per epoch, then epochs 226-350 at 240 (3x the
# updates per env step), then 128 held-out meta-episodes acting with the policy's mode.
# Extra flags go to both stages, e.g. --run_name NAME --seed 1 --gin "KEpisodeMetaworld.success_bonus = 10.0".
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/learning/run_name.sh
run=$(run_name ml1_reach_sampled "$@")
common=(--gin "Experiment.val_timesteps_per_epoch = 900" --gin 'KEpisodeMetaworld.train_goals = "sampled"')
bash benchmarks/learning/ml1_reach.sh --run_name "$run" --epochs 225 "${common[@]}" "$@"
bash benchmarks/learning/ml1_reach.sh --run_name "$run" --resume --epochs 350 "${common[@]}" \
  --gin "Experiment.train_batches_per_epoch = 240" "$@"
python benchmarks/learning/eval_split.py "runs/learning/$run" --env metaworld --split test --episodes 128 --actions mode
