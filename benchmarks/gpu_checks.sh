#!/usr/bin/env bash
# Every GPU check in one run that ends within BUDGET seconds (default 540), for a short loan of a GPU machine:
#   1. device facts and the package versions in use;
#   2. benchmarks/model_throughput.py at the ML45 size: fp32 / bf16, bf16 under torch.compile, then bf16 with each
#      attention kernel forced;
#   3. benchmarks/rollout_cache.py at the ML45 size in bf16;
#   4. ML10 at the published model size in bf16 (configs/metaworld/ml10.gin, validation every 3 epochs) until its
#      share of the budget ends, GPU utilisation sampled by nvidia-smi, then its curves (summarize.py);
#   5. one short ML10 epoch with Experiment.torch_compile (the compiled loss inside a real run);
#   6. the test suite, with whatever time is left (on a GPU machine the Experiment tests train on CUDA).
# Usage: bash benchmarks/gpu_checks.sh [BUDGET]   (OUT=dir for where the logs go, default runs/gpu_checks)
# Each step runs under its own time limit, so one that fails or hangs does not take the later ones with it.
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_steps.sh  # begin, left, step, facts
begin runs/gpu_checks checks.log "${1:-}"

facts
step model_throughput 60 python benchmarks/model_throughput.py
step compiled 150 python benchmarks/model_throughput.py --dtypes bf16 --compile on
step attention_kernels 60 python benchmarks/model_throughput.py --agents agent --dtypes bf16 --sdpa flash,efficient,math
step rollout_cache 45 python benchmarks/rollout_cache.py --dtype bf16

run=runs/learning/ml10_gpu
ml10_time=$(($(left) - 230))
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 >"$out/gpu_use.csv" 2>&1 &
smi=$!
step ml10 "$ml10_time" python examples/metaworld.py --benchmark ml10 --configs configs/metaworld/ml10.gin \
  --mixed_precision bf16 --buffer_dir runs/learning --run_name ml10_gpu --gin "Experiment.val_interval = 3"
kill "$smi" 2>/dev/null
step ml10_summary 30 python benchmarks/learning/summarize.py "$run"
cp "$run/metrics.jsonl" "$out/ml10_metrics.jsonl" 2>/dev/null

step compiled_run 120 python examples/metaworld.py --benchmark ml10 --configs configs/metaworld/ml10.gin \
  --mixed_precision bf16 --buffer_dir runs/learning --run_name ml10_gpu_compiled --epochs 1 \
  --gin "Experiment.torch_compile = True" --gin "Experiment.train_timesteps_per_epoch = 300" \
  --gin "Experiment.train_batches_per_epoch = 500" --gin "Experiment.val_interval = None"

workers=$(python -c "import xdist; print('-n 8')" 2>/dev/null)  # pytest-xdist, where installed
step tests "$(($(left) - 5))" python -m pytest -q -p no:cacheprovider $workers tests
echo "== done after $((SECONDS - start))s" | tee -a "$log"
