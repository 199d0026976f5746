#!/usr/bin/env bash
# README's test command on two commits, from fresh clones, run alternately on this machine (A B A B ...), so
# that a drift in the machine's speed falls on both; prints each run's seconds, the ratio B/A, and the CPU.
#   benchmarks/bench_suite.sh OLD_COMMIT NEW_COMMIT [ROUNDS=2] [ORDER=BA]   # ORDER=BA starts with NEW
# Nothing else should run meanwhile: on 2 cores a second pytest slows both. Each clone gets its own .venv
# from its own uv.lock (not timed). Logs and clones stay in $BENCH_DIR (default: a new temporary folder).
set -euo pipefail
old=$1 new=$2 rounds=${3:-2} order=${4:-BA}
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${BENCH_DIR:-$(mktemp -d -t bench-suite-XXXXXX)}
command -v uv >/dev/null || python3 -m pip install -q uv
for side in A B; do
  commit=$([ "$side" = A ] && echo "$old" || echo "$new")
  git clone -q --no-hardlinks "$repo" "$dir/$side"
  git -C "$dir/$side" checkout -q "$commit"
  (cd "$dir/$side" && uv sync -q --locked --all-extras --compile-bytecode)
done
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; A = $old, B = $new"
declare -A total=([A]=0 [B]=0)
for r in $(seq 1 "$rounds"); do
  for side in $(echo "$order" | grep -o .); do
    start=$(date +%s)
    (cd "$dir/$side" && .venv/bin/python -m pytest -q -p no:cacheprovider > "$dir/$side-$r.log" 2>&1) || true
    secs=$(( $(date +%s) - start ))
    total[$side]=$(( ${total[$side]} + secs ))
    echo "round $r $side: $secs s ($(tail -1 "$dir/$side-$r.log"))"
  done
done
python3 -c "print(f'B/A = {${total[B]} / ${total[A]}:.2f} (totals {${total[B]}} s / {${total[A]}} s)')"
