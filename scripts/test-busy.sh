#!/usr/bin/env bash
# The whole suite (scripts/test.sh) on a busy machine: one busy loop pinned to each online
# CPU for as long as the tests run, so every timing the tests rely on is met under load
# (late wake-ups, deferred softirqs, SYN retransmits, io_uring completing inline).
# Extra arguments go to pytest, as for scripts/test.sh. Prints how long the run took.
set -euo pipefail
cd "$(dirname "$0")/.."

hogs=()
stop_hogs() {
    # Only the loops started here, by their pids.
    for pid in "${hogs[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait "${hogs[@]}" 2>/dev/null || true
}
trap stop_hogs EXIT

for cpu in $(seq 0 $(($(nproc) - 1))); do
    taskset -c "$cpu" sh -c 'while :; do :; done' &
    hogs+=("$!")
done
echo "test-busy: ${#hogs[@]} busy loops pinned to CPUs 0-$((${#hogs[@]} - 1)) (pids ${hogs[*]})"

start=$(date +%s)
status=0
bash scripts/test.sh "$@" || status=$?
elapsed=$(($(date +%s) - start))
echo "test-busy: exit $status after $((elapsed / 60)) min $((elapsed % 60)) s beside ${#hogs[@]} busy loops"
exit "$status"
