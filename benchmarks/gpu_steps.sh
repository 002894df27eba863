# Shared by the GPU scripts (sourced, not run): time-budgeted steps that log to "$log". The sourcing script calls
# begin first.

# begin DEFAULT_OUT LOG_NAME [BUDGET]: sets budget (seconds, default 540), out ($OUT or DEFAULT_OUT, created), log
# ($out/LOG_NAME) and start (the $SECONDS the budget counts from)
begin() {
  budget=${3:-540}
  out=${OUT:-$1}
  mkdir -p "$out"
  log="$out/$2"
  start=$SECONDS
  export PYTHONUNBUFFERED=1
}

# seconds of the budget left
left() { echo $((budget - (SECONDS - start))); }

# step NAME SECONDS CMD...: runs CMD for at most SECONDS (Ctrl-C first, so a run can close its files), logging;
# its exit status is left in rc
step() {
  local name=$1 limit=$2
  shift 2
  ((limit > 0)) || { echo "== $name: skipped, no time left" | tee -a "$log"; return; }
  echo "== $name (at most ${limit}s, at $((SECONDS - start))s of $budget)" | tee -a "$log"
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start))s" | tee -a "$log"
}

# the device and the package versions in use
facts() {
  step facts 30 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc --all;
    python3 -c "import torch, gymnasium, metaworld, gin, accelerate; print(\"torch\", torch.__version__, \"cuda\",
    torch.version.cuda, torch.cuda.is_available(), \"| gymnasium\", gymnasium.__version__, \"| accelerate\",
    accelerate.__version__)"'
}
