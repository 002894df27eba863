# Sourced by the learning scripts.

# run_name DEFAULT "$@" prints the value of a --run_name among the flags (the last one wins, as in
# argparse), else DEFAULT: the run folder the script summarises.
run_name() {
  local name=$1
  shift
  while (($# > 1)); do
    [[ $1 == --run_name ]] && name=$2
    shift
  done
  printf '%s\n' "$name"
}

# train_and_summarize DEFAULT_RUN SCRIPT_FLAGS... -- USER_FLAGS...
# runs examples/metaworld.py with the script's flags, then the user's (which may override --run_name),
# into runs/learning/, and prints the one-line summary of the run it made.
train_and_summarize() {
  local default=$1 fixed=()
  shift
  while (($# > 0)) && [[ $1 != -- ]]; do
    fixed+=("$1")
    shift
  done
  shift  # the --
  local run
  run=$(run_name "$default" "$@")
  python examples/metaworld.py "${fixed[@]}" --buffer_dir runs/learning --run_name "$default" "$@"
  python benchmarks/learning/summarize.py "runs/learning/$run"
}
