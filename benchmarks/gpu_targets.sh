#!/usr/bin/env bash
# The GPU throughput targets in one run that ends within BUDGET seconds (default 540), for a short loan of one GPU
# machine (one H200 with 16 CPU cores is what the targets name):
#   1. device facts and package versions;
#   2. update rate at the ML45 size in bf16: benchmarks/model_throughput.py, MultiTaskAgent compiled in the default
#      mode and with CUDA graphs (reduce-overhead), then Agent with CUDA graphs;
#   3. ML10 at the published model size (configs/metaworld/ml10.gin), overlapped (--overlap): ACTORS async actors
#      (default 128) in the collector while the learner trains, at a replay ratio of 60 updates per 8,000 env steps
#      (the two targets' ratio), the loss compiled in whichever mode step 2 found faster; validation and periodic
#      checkpoints off (a run that fails early in a CUDA-graph mode is run again in the default mode); GPU
#      utilisation and load average sampled every 2 s; stopped when its share of the budget ends;
#   4. the run's env steps/s and updates/s epoch by epoch and in the steady state (benchmarks/run_rates.py).
# Usage: bash benchmarks/gpu_targets.sh [BUDGET]   (OUT=dir for the logs, default runs/gpu_targets; ACTORS=n actors;
#   MODE=reduce-overhead skips step 2 and compiles in that mode; THREADS=n torch threads for the learner;
#   PER_WORKER=n envs per async worker process, default auto: one worker per CPU; COLLECTORS=n collector processes
#   of ACTORS actors each, default 1)
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_steps.sh  # begin, left, step, facts
begin runs/gpu_targets targets.log "${1:-}"
actors=${ACTORS:-128}
collectors=${COLLECTORS:-1}

facts

if [[ -n ${MODE:-} ]]; then  # the compile mode given: step 2 skipped
  mode=$MODE
else
  rates="$out/update_rates.log"
  step update_rates 190 env TORCH_LOGS=perf_hints bash -c "python3 benchmarks/model_throughput.py --agents multitask --dtypes bf16 \
    --compile on,reduce-overhead && python3 benchmarks/model_throughput.py --agents agent --dtypes bf16 \
    --compile reduce-overhead" | tee "$rates" >/dev/null
  grep -c "skipping cudagraphs" "$rates" | sed 's/^/cudagraph skips logged: /' | tee -a "$log"
  # the faster compile mode of MultiTaskAgent (the ML10 config's agent) for the run below
  mode=$(python3 - "$rates" <<'EOF'
import re, sys
rows = {m: float(u) for m, u in re.findall(r"MultiTaskAgent \(128 bins\), compiled \(([\w-]+)\) \| bf16 \| \w+ \| [^|]+\| ([\d.]+)", open(sys.argv[1]).read())}
print(max(rows, key=rows.get) if rows else "default")
EOF
  )
fi
echo "== ML10 run compiles in mode: $mode" | tee -a "$log"

run=runs/learning/ml10_gpu_overlap
rm -rf "$run"
(while sleep 2; do echo "$(date +%s) $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader) \
load $(cut -d' ' -f1 /proc/loadavg)"; done) >"$out/gpu_use.log" 2>&1 &
sampler=$!
ml10() {
  step "ml10_overlap_$1" "$(($(left) - 25))" python3 examples/metaworld.py --benchmark ml10 \
    --configs configs/metaworld/ml10.gin --mixed_precision bf16 --overlap --buffer_dir runs/learning \
    --run_name ml10_gpu_overlap --parallel_actors "$actors" --gin "Experiment.val_interval = None" \
    --gin "Experiment.ckpt_interval = None" --gin "Experiment.train_batches_per_epoch = $((actors * collectors * 1500 * 60 / 8000))" \
    --gin "Experiment.torch_compile = '$1'" ${THREADS:+--gin "Experiment.torch_threads = $THREADS"} \
    ${PER_WORKER:+--envs_per_worker "$PER_WORKER"} --collectors "$collectors"
}
ml10 "$mode"
if ((rc != 0 && rc != 124)) && [[ $mode != default ]] && (($(left) > 150)); then  # failed early: the plain compile
  rm -rf "$run"
  ml10 default
fi
kill "$sampler" 2>/dev/null
step rates 15 python3 benchmarks/run_rates.py "$run"
cp "$run/metrics.jsonl" "$out/ml10_metrics.jsonl" 2>/dev/null
cp "$run/metrics_collect.jsonl" "$out/ml10_metrics_collect.jsonl" 2>/dev/null
tail -n 40 "$run/overlap/collector.log" >"$out/collector_tail.log" 2>/dev/null
echo "== done after $((SECONDS - start))s" | tee -a "$log"
