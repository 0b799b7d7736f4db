#!/usr/bin/env bash
# Wall-clock figures of the README's set-up commands, each from a fresh clone of HEAD:
#   make demo (fresh clone: creates .venv), make demo again (already set up), .ci/run.
# Usage: bench/setup_times.sh [--skip-ci]. Prints one line per figure; logs stay in $work.
set -euo pipefail
src=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -m); logs: $work"

timed() {  # timed NAME DIR CMD...: runs CMD in DIR, prints "NAME: N s (exit E)"
    local name=$1 dir=$2; shift 2
    local start end rc=0 log
    log="$work/$(echo "$name" | tr -c 'A-Za-z0-9\n' '_').log"
    start=$(date +%s.%N)
    (cd "$dir" && "$@") >"$log" 2>&1 || rc=$?
    end=$(date +%s.%N)
    printf '%s: %.1f s (exit %d)\n' "$name" "$(echo "$end - $start" | bc)" "$rc"
}

git clone -q "$src" "$work/demo"
timed "make demo, fresh clone" "$work/demo" make demo
timed "make demo, set up" "$work/demo" make demo
ls "$work/demo/out"
if [ "${1:-}" != "--skip-ci" ]; then
    git clone -q "$src" "$work/ci"
    timed ".ci/run, fresh clone" "$work/ci" env CI=true bash .ci/run
    grep -E "passed|failed" "$work"/_ci_run*.log | tail -1 || true
fi
