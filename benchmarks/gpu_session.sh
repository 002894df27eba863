#!/usr/bin/env bash
# Issue 22's GPU targets in one call of a short GPU loan: benchmarks/gpu_targets.sh twice, CUDA graphs on (the
# faster compile mode at stop 40), first one collector of 128 actors, then two collectors of 64 actors in worker
# processes of 8 envs; each run's logs and metrics go into one archive, rewritten after each run so a call cut off
# in the second still returns the first (a device call returns few files, so one archive holds them all).
# Usage: bash benchmarks/gpu_session.sh [SECONDS_EACH]   (default 272: both runs and the archive in ~9.5 minutes)
#   The archive is $OUT/gpu_targets.tgz ($OUT: the folder a device call returns; runs/ elsewhere); the end of each
#   run's targets.log is printed.
set -uo pipefail
cd "$(dirname "$0")/.."
each=${1:-272}
dest=${OUT:-runs}
mkdir -p "$dest"
work=$(mktemp -d)
archive() { tar czf "$dest/gpu_targets.tgz" -C "$work" .; }
OUT=$work/one_collector MODE=reduce-overhead bash benchmarks/gpu_targets.sh "$each" >/dev/null 2>&1
archive
OUT=$work/two_collectors MODE=reduce-overhead COLLECTORS=2 ACTORS=64 PER_WORKER=8 \
  bash benchmarks/gpu_targets.sh "$each" >/dev/null 2>&1
archive
for log in "$work"/*/targets.log; do
  echo "== $log"
  grep -v "collect:" "$log" | tail -n 25
done
