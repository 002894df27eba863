#!/usr/bin/env bash
# ML1 reach-v3 on sampled training goals with a success bonus, on 2 CPU cores (docs/RESULTS.md):
#   1. 225 epochs at 80 updates per epoch on sampled goals (~55 min);
#   2. a success bonus of 10 added to the buffer's rewards (add_success_bonus.py);
#   3. epochs 226-350 at 240 updates per epoch (3x the updates per env step), with the bonus (~80 min);
#   4. epochs 351-500 the same at a third of the learning rate, 1e-4 (~100 min);
#   5. every one of the 50 held-out goals once, acting with the policy's mode: the last checkpoint,
#      then the mean of the weights saved at epochs 450-500.
# Measured (50 held-out goals, final attempt): seed 1, 0.96 at epoch 500 and with the mean of 450-500
# (0.62 at 350, where step 4 begins; 0.86 at 450; step 4 made as two resumes, to 450 and to 500);
# seed 0 ran steps 1-3 only: 0.90 at epoch 350, 0.94 with the mean of 325 and 350.
# Extra flags go to every stage, e.g. --run_name NAME --seed 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/learning/run_name.sh
run=$(run_name ml1_reach_sampled "$@")
common=(--gin "Experiment.val_timesteps_per_epoch = 900" --gin 'KEpisodeMetaworld.train_goals = "sampled"')
stage2=("${common[@]}" --gin "KEpisodeMetaworld.success_bonus = 10.0" --gin "Experiment.train_batches_per_epoch = 240"
  --gin "Experiment.ckpt_interval = 5" --gin "Experiment.keep_checkpoints = None")
bash benchmarks/learning/ml1_reach.sh --run_name "$run" --epochs 225 "${common[@]}" "$@"
python benchmarks/learning/add_success_bonus.py "runs/learning/$run" --bonus 10
bash benchmarks/learning/ml1_reach.sh --run_name "$run" --resume --epochs 350 "${stage2[@]}" "$@"
bash benchmarks/learning/ml1_reach.sh --run_name "$run" --resume --epochs 500 "${stage2[@]}" \
  --gin "Experiment.learning_rate = 1e-4" "$@"
for weights in "" "--average 450:500"; do
  # shellcheck disable=SC2086 # $weights is empty or two words
  python -m amago_like.evaluate "runs/learning/$run" --split test --each_goal --actions mode $weights
done
