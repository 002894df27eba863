# Sourced by the learning scripts: run_name DEFAULT "$@" prints the value of a --run_name among the
# flags (the last one wins, as in argparse), else DEFAULT: the run folder the script summarises.
run_name() {
  local name=$1
  shift
  while (($# > 1)); do
    [[ $1 == --run_name ]] && name=$2
    shift
  done
  printf '%s\n' "$name"
}
