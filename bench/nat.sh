#!/usr/bin/env bash
# bench/nat.sh: cold starts of the NAT matrix of tests/nat.rs (issue 16): six routers over
# four sites (1:1, masquerade, symmetric, masquerade dropping unsolicited inbound; no
# hairpin; default --ipalloc-init), each run a fresh world, timed from the routers' start to
#   ring    every router knows the ring
#   reach   every pod pings every other (pairs tried in turn)
#   paths   as direct, but a masquerade router may still be relayed as `punch
#           unanswered` (the conntrack race before the swap) if the other is punched
#   direct  every pair the NATs allow direct or punched, the symmetric ones relayed
#           (`none`: not within 90 s of the start; counted, left out of the median)
# and, with -t, 20 MB over a punched path and over a relayed one (Mbit/s and the ratio).
# Prints the median and the max of each. The world is tests/nat_bench.rs (an ignored test:
# namespaces named weft-*-<pid>-*, deleted on exit). Needs root, iproute2, nftables.
#
# Usage: bench/nat.sh [-n RUNS] [-t]
#        BENCH_LOG_DIR=dir keeps each run's output (the path table of a run that missed `direct`)
set -euo pipefail

RUNS=${BENCH_RUNS:-5}
THROUGHPUT=0
while getopts "n:th" opt; do
  case $opt in
    n) RUNS=$OPTARG ;;
    t) THROUGHPUT=1 ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
  esac
done
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 && $RUNS -le 50 ]] || { echo "-n must be 1..50" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "needs root (network namespaces)" >&2; exit 1; }

cd "$(dirname "$0")/.."
cargo test --release --test nat_bench --no-run >&2
LINES=$(mktemp /tmp/weft-natbench-XXXX)
trap 'rm -f "$LINES"' EXIT
for i in $(seq 1 "$RUNS"); do
  out=$(WEFT_REQUIRE_ROOT_TESTS=1 WEFT_NAT_BENCH_THROUGHPUT=$THROUGHPUT \
    cargo test --release --test nat_bench -- --ignored --nocapture --exact nat_matrix_cold_start_times 2>&1) \
    || { echo "$out" | tail -40 >&2; echo "run $i failed" >&2; exit 1; }
  [[ -n ${BENCH_LOG_DIR:-} ]] && mkdir -p "$BENCH_LOG_DIR" && echo "$out" >"$BENCH_LOG_DIR/run-$i.log"
  line=$(grep '^nat-bench ' <<<"$out")
  echo "[bench] run $i: ${line#nat-bench }" >&2
  echo "$line" >>"$LINES"
done

# KEY: the values of KEY= over the runs, "none" and "-" left out.
values() { grep -o " $1=[^ ]*" "$LINES" | cut -d= -f2 | grep -v -e '^none$' -e '^-$' || true; }
stats() { # KEY -> "median M s, max X s (K of N runs)"
  local v n
  v=$(values "$1" | sort -g)
  n=$(grep -c . <<<"$v" || true)
  if [[ -z $v ]]; then echo "none of $RUNS runs"; return; fi
  awk -v n="$n" -v runs="$RUNS" '{a[NR]=$1} END {
    m = (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
    printf "median %.2f s, max %.2f s (%d of %d runs)\n", m, a[n], n, runs }' <<<"$v"
}
echo "weft NAT matrix cold start: $(uname -r), $(nproc) CPUs, $RUNS runs, from the routers' start"
for k in ring reach paths direct; do printf '  %-7s %s\n' "$k" "$(stats "$k")"; done
if [[ $THROUGHPUT == 1 ]]; then
  v=$(values "punched/relayed-mbit/ratio")
  if [[ -n $v ]]; then
    col() { cut -d/ -f"$1" <<<"$v" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
    echo "  20 MB punched $(col 1) Mbit/s, relayed $(col 2) Mbit/s, ratio $(col 3) (medians of $(grep -c . <<<"$v") runs)"
  else
    echo "  throughput: no run had a punched pair"
  fi
fi
