#!/usr/bin/env bash
# bench/policy.sh: issue 18's throughput point, "throughput through a node carrying 1,000
# policies over 10,000 pods within 5 % of one with none (same run)". Two routers with
# --network-policy and a test API server holding the scale case (weft::policy::scale); two
# real pods plugged by the CNI plugin, ns0/client on node 1 and ns0/server on node 0, which
# ten of the policies select and which they let the client into on TCP 80. Rounds alternate
# the policies deleted and put back (each waited for in node 0's nft map), streaming TCP from
# client to server for SECONDS each time; prints each round, the medians and the ratio
# (with / none). The world is tests/policy_bench.rs (an ignored test: namespaces named
# weft-t<pid>-*, deleted on exit). Needs root, iproute2, nftables.
#
# -p split pins each node to a CPU of its own (router and its pod's thread), as two machines.
# Usage: bench/policy.sh [-n ROUNDS] [-s SECONDS] [-p split]   (defaults 5, 4, unpinned; at most 10 and 8)
set -euo pipefail

ROUNDS=5
SECONDS_PER=4
PIN=
while getopts "n:s:p:h" opt; do
  case $opt in
    n) ROUNDS=$OPTARG ;;
    s) SECONDS_PER=$OPTARG ;;
    p) PIN=$OPTARG ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 && $ROUNDS -le 10 ]] || { echo "-n must be 1..10" >&2; exit 2; }
[[ $SECONDS_PER =~ ^[0-9]+$ && $SECONDS_PER -ge 1 && $SECONDS_PER -le 8 ]] || { echo "-s must be 1..8" >&2; exit 2; }
[[ -z $PIN || $PIN == split ]] || { echo "-p takes only split" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "needs root (network namespaces)" >&2; exit 1; }

cd "$(dirname "$0")/.."
cargo test --release --locked --test policy_bench --no-run >&2
out=$(WEFT_REQUIRE_ROOT_TESTS=1 WEFT_POLICY_BENCH_ROUNDS=$ROUNDS WEFT_POLICY_BENCH_SECONDS=$SECONDS_PER WEFT_POLICY_BENCH_PIN=$PIN \
  cargo test --release --locked --test policy_bench -- --ignored --nocapture --exact \
  throughput_with_a_thousand_policies_against_none 2>&1) \
  || { echo "$out" | tail -40 >&2; echo "the bench failed" >&2; exit 1; }
echo "weft NetworkPolicy throughput: $(uname -r), $(nproc) CPUs, $ROUNDS rounds of $SECONDS_PER s${PIN:+, pinned: $PIN}"
grep '^round ' <<<"$out" | sed 's/^/  /'
line=$(grep '^policy-bench ' <<<"$out")
echo "  median Mbit/s: none $(grep -o 'none=[^ ]*' <<<"$line" | cut -d= -f2)," \
  "1,000 policies $(grep -o 'with=[^ ]*' <<<"$line" | cut -d= -f2)," \
  "ratio $(grep -o 'ratio=[^ ]*' <<<"$line" | cut -d= -f2)"
