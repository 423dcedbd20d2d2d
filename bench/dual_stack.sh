#!/usr/bin/env bash
# bench/dual_stack.sh: TCPv6 against TCPv4 pod-to-pod throughput through weft in the same run
# (issue 19: TCPv6 within 10 % of TCPv4), printed as medians and their ratio.
#
# Topology (namespaces named weft-b-<pid>-*, deleted on exit; files under a mktemp dir):
#
#   pod ns ══ node0 ns ══ eth0 192.0.2.10 ──veth── 192.0.2.11 eth0 ══ node1 ns ══ pod ns
#
# Two real `weft router`s (--ipalloc-range fd00:32::/112 besides the default IPv4 range), one
# pod per node plugged by the real CNI plugin (weft-cni ADD), so each pod has an IPv4 and an
# IPv6 address. Per round: iperf3 TCP over IPv4 and over IPv6 between the same two pods, the
# order alternating each round (v4 first in odd rounds) so that the machine's noise falls on
# both families alike. Also counts the TCP segments each family had coalesced at the
# receiving router over the run (status .dataplane.coalesced_v4/_v6).
# Needs root, iproute2, iperf3, jq.
#
# Usage: bench/dual_stack.sh [-r ROUNDS] [-t SECONDS] [-P STREAMS]
#        WEFT_BIN (default target/release/weft), WEFT_CNI_BIN (default target/release/weft-cni)
#        BENCH_WEFT_ENV: extra router environment, e.g. "WEFT_DISABLE_OFFLOAD=1"
set -euo pipefail

ROUNDS=${BENCH_ROUNDS:-5}
DURATION=${BENCH_DURATION:-5}
STREAMS=1
while getopts "r:t:P:h" opt; do
  case $opt in
    r) ROUNDS=$OPTARG ;;
    t) DURATION=$OPTARG ;;
    P) STREAMS=$OPTARG ;;
    *) sed -n '2,19p' "$0"; exit 2 ;;
  esac
done
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 && $ROUNDS -le 50 ]] || { echo "rounds must be 1..50" >&2; exit 2; }
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 2 && $DURATION -le 120 ]] || { echo "duration must be 2..120 s" >&2; exit 2; }
[[ $STREAMS =~ ^[0-9]+$ && $STREAMS -ge 1 && $STREAMS -le 8 ]] || { echo "streams must be 1..8" >&2; exit 2; }

TARGET=${CARGO_TARGET_DIR:-target}
WEFT_BIN=$(realpath "${WEFT_BIN:-$TARGET/release/weft}")
WEFT_CNI_BIN=$(realpath "${WEFT_CNI_BIN:-$TARGET/release/weft-cni}")
WEFT_ENV=${BENCH_WEFT_ENV:-}
RANGE6=fd00:32::/112
[[ -x $WEFT_BIN && -x $WEFT_CNI_BIN ]] || { echo "build first: cargo build --workspace --release" >&2; exit 1; }

PFX="weft-b-$$"
CMD_TIMEOUT=20
PIDS=()
TMP=$(mktemp -d "/tmp/${PFX}-XXXX")
RESULTS="$TMP/results"
: >"$RESULTS"

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

cleanup() {
  set +e
  teardown_run "${PIDS[@]}"
  if [[ -n ${BENCH_LOG_DIR:-} ]]; then
    mkdir -p "$BENCH_LOG_DIR" && cp "$RESULTS" "$TMP"/n?/log "$BENCH_LOG_DIR/" 2>/dev/null
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces)"
for tool in ip iperf3 jq nsenter; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install iproute2 iperf3 jq util-linux)"
done
cleanup_stale

# ---------------------------------------------------------------- topology
N=("$PFX-n0" "$PFX-n1")
mkns "${N[0]}"; mkns "${N[1]}"
t ip -n "${N[0]}" link add eth0 type veth peer name eth0 netns "${N[1]}"
for i in 0 1; do
  t ip -n "${N[$i]}" addr add "192.0.2.1$i/24" dev eth0
  t ip -n "${N[$i]}" link set eth0 up
done

secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
for i in 0 1; do
  d="$TMP/n$i"
  mkdir -p "$d/state"
  (umask 077; echo "$secret" >"$d/secret")
  # shellcheck disable=SC2046,SC2086
  ip netns exec "${N[$i]}" env $(env | sed -n 's/^\(WEFT_[A-Za-z0-9_]*\)=.*/-u \1/p') RUST_LOG=${RUST_LOG:-info} \
    $WEFT_ENV "$WEFT_BIN" router --name "n$i" --listen "192.0.2.1$i:6783" \
    --peer 192.0.2.10:6783 --peer 192.0.2.11:6783 --ipalloc-init seed=n0,n1 \
    --ipalloc-range "$RANGE6" --secret-file "$d/secret" --state-dir "$d/state" --api "$d/api.sock" \
    >"$d/log" 2>&1 &
  PIDS+=($!)
done

status() { # NODE_INDEX: the router's status JSON
  # shellcheck disable=SC2046
  env $(env | sed -n 's/^\(WEFT_[A-Za-z0-9_]*\)=.*/-u \1/p') timeout 5 "$WEFT_BIN" status --json \
    --api "$TMP/n$1/api.sock" 2>/dev/null
}
ready=""
for _ in $(seq 120); do
  if [[ $(status 0 | jq -r '.ipam6.state // empty' 2>/dev/null) == ready &&
        $(status 1 | jq -r '.ipam6.state // empty' 2>/dev/null) == ready ]]; then ready=1; break; fi
  sleep 0.5
done
[[ -n $ready ]] || { tail -n 15 "$TMP"/n?/log >&2; die "the routers' IPv6 rings were not ready within 60 s"; }

# plug NODE_INDEX: a pod on that node through weft-cni ADD; prints "v4 v6".
plug() {
  local i=$1 pod="$PFX-p$1" conf out
  mkns "$pod"
  conf="{\"cniVersion\":\"1.0.0\",\"name\":\"weft\",\"type\":\"weft\",\"socket\":\"$TMP/n$i/api.sock\",\"mtu\":0}"
  for _ in $(seq 20); do
    if out=$(echo "$conf" | CNI_COMMAND=ADD CNI_CONTAINERID="bench-$i" CNI_NETNS="/run/netns/$pod" \
        CNI_IFNAME=eth0 CNI_PATH=/nonexistent t nsenter --net="/run/netns/${N[$i]}" "$WEFT_CNI_BIN" 2>&1); then
      jq -r '[.ips[].address | sub("/.*"; "")] | join(" ")' <<<"$out"
      return 0
    fi
    sleep 0.5
  done
  die "weft-cni ADD on n$i failed: $out"
}
read -r A4 A6 <<<"$(plug 0)"
read -r B4 B6 <<<"$(plug 1)"
[[ $A6 == *:* && $B6 == *:* ]] || die "the pods did not get IPv6 addresses: $A4 $A6 / $B4 $B6"
log "pods: n0 $A4 $A6, n1 $B4 $B6; offload: $(status 0 | jq -r .dataplane.offload)"
for dst in "$B4" "$B6"; do
  ok=""
  for _ in $(seq 30); do
    nsx "$PFX-p0" ping -n -q -c 1 -W 1 "$dst" >/dev/null 2>&1 && { ok=1; break; }
  done
  [[ -n $ok ]] || die "pod on n0 cannot reach $dst"
done
ip netns exec "$PFX-p1" iperf3 -s >"$TMP/iperf-server.log" 2>&1 &
PIDS+=($!)
sleep 0.5

# ---------------------------------------------------------------- measurement
iperf() { # FAMILY(4|6) DST -> Mbit/s received
  local out="$TMP/iperf-client.json"
  timeout $((DURATION + 20)) ip netns exec "$PFX-p0" iperf3 "-$1" -c "$2" -t "$DURATION" -P "$STREAMS" \
    --connect-timeout 3000 -J >"$out" 2>/dev/null || true
  jq -r '(.end.sum_received.bits_per_second // 0) / 1e6 | floor' "$out" 2>/dev/null || echo 0
}
c4_0=$(status 1 | jq -r '.dataplane.coalesced_v4 // 0')
c6_0=$(status 1 | jq -r '.dataplane.coalesced_v6 // 0')
log "$ROUNDS rounds of ${DURATION}s, $STREAMS stream(s), IPv4 and IPv6 alternating first"
for ((r = 1; r <= ROUNDS; r++)); do
  order="4 6"; ((r % 2)) || order="6 4"
  for fam in $order; do
    dst=$B4; [[ $fam == 6 ]] && dst=$B6
    v=$(iperf "$fam" "$dst")
    echo "v$fam $v" >>"$RESULTS"
    log "round $r/$ROUNDS: TCPv$fam $v Mbit/s"
  done
done
c4=$(($(status 1 | jq -r '.dataplane.coalesced_v4 // 0') - c4_0))
c6=$(($(status 1 | jq -r '.dataplane.coalesced_v6 // 0') - c6_0))

# ---------------------------------------------------------------- report
median() { # KEY
  awk -v k="$1" '$1 == k {print $2}' "$RESULTS" | sort -g |
    awk '{v[NR] = $1} END {if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
all() { awk -v k="$1" '$1 == k {printf "%s%s", sep, $2; sep = " "}' "$RESULTS"; }
m4=$(median v4); m6=$(median v6)
echo
echo "weft dual-stack bench: $(uname -r), $(nproc) CPUs, $ROUNDS rounds x ${DURATION}s, $STREAMS stream(s), offload: $(status 0 | jq -r .dataplane.offload)"
echo "TCPv4 Mbit/s: median $m4 (rounds: $(all v4))"
echo "TCPv6 Mbit/s: median $m6 (rounds: $(all v6))"
echo "v6 / v4: $(awk -v a="$m6" -v b="$m4" 'BEGIN {if (b == 0) print "-"; else printf "%.3f", a / b}')"
echo "segments coalesced at the receiving router: IPv4 $c4, IPv6 $c6"
