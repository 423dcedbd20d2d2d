#!/usr/bin/env bash
# bench/tunnel.sh: pod-to-pod throughput, latency and CPU cost of weft, printed as ratios
# to baselines measured in the same run (DESIGN.md "Layout": bench/ prints ratios).
#
# Topology (all in network namespaces named weft-b-<pid>-*, deleted on exit):
#
#   pod ns ══veth══ node0 ns ══ eth0 192.0.2.10 ──veth── 192.0.2.11 eth0 ══ node1 ns ══veth══ pod ns
#
# One pod pair per mode, all plumbed like weft's CNI plugin does it (/32 on eth0, default
# via 169.254.1.1 onlink, permanent neighbour, /32 host route, MTU 1420):
#   raw           pods 10.44.{0,1}.10, nodes route the other pod's /32 via the underlay (no tunnel)
#   vxlan         pods 10.45.{0,1}.10, kernel VXLAN vx0 (VNI 42, unencrypted) between the nodes
#   wireguard-go  pods 10.46.{0,1}.10, userspace WireGuard (if installed), configured with wg
#   wg-kernel     pods 10.47.{0,1}.10, kernel WireGuard (if the kernel has it)
#   weft          pods from each router's owned range (start+10), routers on 10.32.0.0/13
#   weft-alt      like weft on its own node pair, with WEFT_ALT_BIN / BENCH_WEFT_ALT_ENV (A/B runs)
#
# Per round and mode (modes interleaved, R rounds): ping RTT idle, iperf3 TCP with 1 and 4
# streams, ping RTT during the 4-stream run, CPU seconds per GB of the tunnel's own
# processes (utime+stime from /proc/PID/stat) and of the whole machine (/proc/stat), RSS.
# Prints medians. Needs root, iproute2, iperf3, jq, ping.
#
# Usage: bench/tunnel.sh [-r ROUNDS] [-t SECONDS] [-m "raw vxlan wireguard-go wg-kernel weft weft-alt"]
#        WEFT_BIN=path/to/weft (default target/release/weft)
#        BENCH_LOG_DIR=dir keeps the routers' logs and the raw per-round results
#        BENCH_PERF_DIR=dir records a system-wide profile (perf record -a -g) of every single-stream
#          run into dir/MODE-ROUND.data, to compare where the machine's cycles go per mode
set -euo pipefail

ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-5}
MODES=${BENCH_MODES:-"raw vxlan wireguard-go wg-kernel weft"}
WEFT_BIN=${WEFT_BIN:-target/release/weft}
WEFT_RANGE=${BENCH_WEFT_RANGE:-10.32.0.0/13}
WEFT_INIT=${BENCH_WEFT_INIT:-}          # e.g. "seed=node0,node1"; empty = the router's default
WEFT_ENV=${BENCH_WEFT_ENV:-}            # extra router environment, e.g. "WEFT_DISABLE_OFFLOAD=1"
WEFT_ALT_BIN=${WEFT_ALT_BIN:-$WEFT_BIN}  # mode weft-alt: a second build or setting, interleaved
WEFT_ALT_ENV=${BENCH_WEFT_ALT_ENV:-}
ROUND=0
[[ -z ${BENCH_PERF_DIR:-} ]] || { command -v perf >/dev/null && mkdir -p "$BENCH_PERF_DIR"; } || { echo "BENCH_PERF_DIR needs perf (apt-get install linux-perf)" >&2; exit 2; }
MTU=1420

while getopts "r:t:m:h" opt; do
  case $opt in
    r) ROUNDS=$OPTARG ;;
    t) DURATION=$OPTARG ;;
    m) MODES=$OPTARG ;;
    *) sed -n '2,28p' "$0"; exit 2 ;;
  esac
done
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 && $ROUNDS -le 50 ]] || { echo "rounds must be 1..50" >&2; exit 2; }
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 2 && $DURATION -le 120 ]] || { echo "duration must be 2..120 s" >&2; exit 2; }

PFX="weft-b-$$"
N0="$PFX-n0"
N1="$PFX-n1"
CMD_TIMEOUT=20
CLK_TCK=$(getconf CLK_TCK)
PIDS=()
WG_SOCKETS=()
TMP=$(mktemp -d "/tmp/${PFX}-XXXX")
RESULTS="$TMP/results"
: >"$RESULTS"

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

cleanup() {
  set +e
  local s
  teardown_run "${PIDS[@]}"
  for s in "${WG_SOCKETS[@]}"; do rm -f "$s"; done
  if [[ -n ${BENCH_LOG_DIR:-} ]]; then # keep the routers' logs and the raw results
    mkdir -p "$BENCH_LOG_DIR" && cp "$RESULTS" "$BENCH_LOG_DIR/results" 2>/dev/null
    for s in weft0 weft1 weft-alt0 weft-alt1; do cp "$TMP/$s/log" "$BENCH_LOG_DIR/$s.log" 2>/dev/null; done
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces)"
for tool in ip iperf3 jq ping getconf; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install iproute2 iperf3 jq iputils-ping)"
done
cleanup_stale

# ---------------------------------------------------------------- topology

NODES=()
mknodes() { # NS0 NS1: two nodes joined by a veth underlay, 192.0.2.10 and .11
  mkns "$1"; mkns "$2"; NODES+=("$1" "$2")
  t ip -n "$1" link add eth0 type veth peer name eth0 netns "$2"
  t ip -n "$1" addr add 192.0.2.10/24 dev eth0
  t ip -n "$2" addr add 192.0.2.11/24 dev eth0
  for n in "$1" "$2"; do
    t ip -n "$n" link set eth0 up
    nsx "$n" sysctl -qw net.ipv4.ip_forward=1
  done
}
mknodes "$N0" "$N1"

VETH_N=0
# add_pod NODE_NS POD_LABEL ADDR: a pod namespace plumbed like weft-cni does it.
add_pod() {
  local node=$1 pod="$PFX-$2" addr=$3 hv mac
  hv="vb$$x$VETH_N"; hv=${hv:0:15}; VETH_N=$((VETH_N + 1))
  mkns "$pod"
  t ip -n "$pod" link add eth0 mtu "$MTU" type veth peer name "$hv" netns "$node"
  t ip -n "$node" link set "$hv" mtu "$MTU" up
  nsx "$node" sysctl -qw "net.ipv4.conf.$hv.proxy_arp=1" "net.ipv4.neigh.$hv.proxy_delay=0"
  t ip -n "$node" route add "$addr/32" dev "$hv"
  mac=$(t ip -n "$node" -o link show dev "$hv" | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
  t ip -n "$pod" addr add "$addr/32" dev eth0
  t ip -n "$pod" link set eth0 up
  t ip -n "$pod" neigh replace 169.254.1.1 lladdr "$mac" dev eth0 nud permanent
  t ip -n "$pod" route add default via 169.254.1.1 dev eth0 onlink
}

# Mode state: pod namespaces, destination address, and PIDs whose CPU/RSS we account.
declare -A SRC DSTNS DST PROCS SKIP OFFLOAD
start_iperf_server() { # MODE
  local mode=$1
  ip netns exec "${DSTNS[$mode]}" iperf3 -s -B "${DST[$mode]}" >"$TMP/iperf-$mode.log" 2>&1 &
  PIDS+=($!)
}

setup_raw() {
  add_pod "$N0" raw-a 10.44.0.10; add_pod "$N1" raw-b 10.44.1.10
  t ip -n "$N0" route add 10.44.1.10/32 via 192.0.2.11
  t ip -n "$N1" route add 10.44.0.10/32 via 192.0.2.10
  SRC[raw]="$PFX-raw-a"; DSTNS[raw]="$PFX-raw-b"; DST[raw]=10.44.1.10; PROCS[raw]=""
}

setup_vxlan() {
  local i n local_ip remote_ip
  for i in 0 1; do
    n=$([[ $i == 0 ]] && echo "$N0" || echo "$N1")
    local_ip=192.0.2.1$i; remote_ip=192.0.2.1$((1 - i))
    t ip -n "$n" link add vx0 type vxlan id 42 local "$local_ip" remote "$remote_ip" dstport 4789 dev eth0
    t ip -n "$n" addr add "10.45.255.$((i + 1))/24" dev vx0
    t ip -n "$n" link set vx0 up
  done
  add_pod "$N0" vx-a 10.45.0.10; add_pod "$N1" vx-b 10.45.1.10
  t ip -n "$N0" route add 10.45.1.10/32 via 10.45.255.2 dev vx0
  t ip -n "$N1" route add 10.45.0.10/32 via 10.45.255.1 dev vx0
  SRC[vxlan]="$PFX-vx-a"; DSTNS[vxlan]="$PFX-vx-b"; DST[vxlan]=10.45.1.10; PROCS[vxlan]=""
}

KERNEL_WG=no
if t ip -n "$N0" link add wgprobe type wireguard 2>/dev/null; then
  KERNEL_WG=yes; t ip -n "$N0" link del wgprobe
fi
WG_GO_CANDIDATE=$(timeout 20 apt-cache policy wireguard-go 2>/dev/null | awk '/Candidate:/ {print $2}' || true)
WG_GO=$(command -v wireguard-go >/dev/null && command -v wg >/dev/null && echo yes || echo no)

setup_wg() { # KIND: go|kernel. Each kind has its own interface, port and pod subnet.
  local kind=$1 mode dev port net i n pids="" k0 k1 p0 p1 peer
  # wireguard-go's control socket is /var/run/wireguard/<dev>.sock, shared by all
  # namespaces: the device name carries our PID and the node index to stay unique.
  if [[ $kind == go ]]; then mode=wireguard-go dev=wg$$g port=51820 net=46
  else mode=wg-kernel dev=wg$$k port=51821 net=47; fi
  k0=$(wg genkey); k1=$(wg genkey); p0=$(wg pubkey <<<"$k0"); p1=$(wg pubkey <<<"$k1")
  (umask 077; echo "$k0" >"$TMP/$dev-0.key"; echo "$k1" >"$TMP/$dev-1.key")
  for i in 0 1; do
    n=$([[ $i == 0 ]] && echo "$N0" || echo "$N1")
    if [[ $kind == go ]]; then
      WG_SOCKETS+=("/var/run/wireguard/$dev$i.sock")
      ip netns exec "$n" env WG_PROCESS_FOREGROUND=1 WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 \
        wireguard-go -f "$dev$i" >"$TMP/wireguard-go-$i.log" 2>&1 &
      PIDS+=($!); pids="$pids $!"
      for _ in $(seq 50); do [[ -S /var/run/wireguard/$dev$i.sock ]] && break; sleep 0.1; done
    else
      t ip -n "$n" link add "$dev$i" type wireguard
    fi
    peer=$([[ $i == 0 ]] && echo "$p1" || echo "$p0")
    nsx "$n" wg set "$dev$i" private-key "$TMP/$dev-$i.key" listen-port "$port" \
      peer "$peer" endpoint "192.0.2.1$((1 - i)):$port" allowed-ips "10.$net.$((1 - i)).0/24"
    t ip -n "$n" link set "$dev$i" mtu "$MTU" up
    t ip -n "$n" route add "10.$net.$((1 - i)).10/32" dev "$dev$i"
  done
  add_pod "$N0" "$mode-a" "10.$net.0.10"; add_pod "$N1" "$mode-b" "10.$net.1.10"
  SRC[$mode]="$PFX-$mode-a"; DSTNS[$mode]="$PFX-$mode-b"; DST[$mode]="10.$net.1.10"; PROCS[$mode]=$pids
}

ip_plus() { # ADDR N
  local a b c d
  IFS=. read -r a b c d <<<"$1"
  local v=$(((a << 24 | b << 16 | c << 8 | d) + $2))
  echo "$((v >> 24 & 255)).$((v >> 16 & 255)).$((v >> 8 & 255)).$((v & 255))"
}

weft_status() { # DIR (under $TMP, e.g. weft0)
  env $(env | sed -n 's/^\(WEFT_[A-Za-z0-9_]*\)=.*/-u \1/p') timeout 5 "$WEFT_BIN" status --json --api "$TMP/$1/api.sock" 2>/dev/null
}

# setup_weft MODE: "weft" runs $WEFT_BIN with $WEFT_ENV on the node pair N0/N1; "weft-alt" runs
# $WEFT_ALT_BIN with $WEFT_ALT_ENV on a second node pair (same addresses, own namespaces), so
# that two builds or settings are measured interleaved in one run.
setup_weft() {
  local mode=$1 bin=$WEFT_BIN wenv=$WEFT_ENV nodes=("$N0" "$N1") pod=weft
  if [[ $mode == weft-alt ]]; then
    bin=$WEFT_ALT_BIN wenv=$WEFT_ALT_ENV nodes=("$PFX-a0" "$PFX-a1") pod=walt
    mknodes "${nodes[0]}" "${nodes[1]}"
  fi
  if [[ ! -x $bin ]]; then
    SKIP[$mode]="binary $bin missing (build with cargo build --release)"; return 1
  fi
  local secret i n d pids="" start0="" start1="" args
  secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  for i in 0 1; do
    n=${nodes[$i]} d="$TMP/$mode$i"
    mkdir -p "$d/state"
    (umask 077; echo "$secret" >"$d/secret")
    args=(router --name "node$i" --listen "192.0.2.1$i:6783" --peer 192.0.2.10:6783 --peer 192.0.2.11:6783
      --secret-file "$d/secret" --state-dir "$d/state" --api "$d/api.sock"
      --ipalloc-range "$WEFT_RANGE" --iface weft0)
    [[ -n $WEFT_INIT ]] && args+=(--ipalloc-init "$WEFT_INIT")
    # shellcheck disable=SC2046
    ip netns exec "$n" env $(env | sed -n 's/^\(WEFT_[A-Za-z0-9_]*\)=.*/-u \1/p') RUST_LOG=${RUST_LOG:-info} \
      $wenv "$bin" "${args[@]}" >"$d/log" 2>&1 &
    PIDS+=($!); pids="$pids $!"
  done
  PROCS[$mode]=$pids
  for _ in $(seq 60); do
    start0=$(weft_status "${mode}0" | jq -r '.ipam.owned_ranges[0].start // empty' 2>/dev/null || true)
    start1=$(weft_status "${mode}1" | jq -r '.ipam.owned_ranges[0].start // empty' 2>/dev/null || true)
    [[ -n $start0 && -n $start1 ]] && break
    for p in $pids; do [[ -d /proc/$p ]] || break 2; done
    sleep 0.5
  done
  if [[ -z $start0 || -z $start1 ]]; then
    SKIP[$mode]="routers exited or did not report owned ranges within 30 s (log tails above)"
    for i in 0 1; do log "--- $mode node$i log (tail)"; tail -n 15 "$TMP/$mode$i/log" >&2 || true; done
    for p in $pids; do kill -9 "$p" 2>/dev/null || true; done
    return 1
  fi
  OFFLOAD[$mode]=$(weft_status "${mode}0" | jq -r '.dataplane.offload // empty' 2>/dev/null || true)
  add_pod "${nodes[0]}" "$pod-a" "$(ip_plus "$start0" 10)"; add_pod "${nodes[1]}" "$pod-b" "$(ip_plus "$start1" 10)"
  SRC[$mode]="$PFX-$pod-a"; DSTNS[$mode]="$PFX-$pod-b"; DST[$mode]=$(ip_plus "$start1" 10)
  return 0
}

# Wait (bounded) until the pod pair of MODE can ping; else mark the mode skipped.
check_path() {
  local mode=$1
  for _ in $(seq 30); do
    nsx "${SRC[$mode]}" ping -n -q -c 1 -W 1 "${DST[$mode]}" >/dev/null 2>&1 && return 0
  done
  SKIP[$mode]="pod ${SRC[$mode]} cannot reach ${DST[$mode]} within 30 s"
  # shellcheck disable=SC2086
  [[ -n ${PROCS[$mode]} ]] && kill -9 ${PROCS[$mode]} 2>/dev/null
  return 1
}

log "kernel WireGuard in this kernel: $KERNEL_WG; wireguard-go: installed=$WG_GO, Debian candidate=${WG_GO_CANDIDATE:-none}"
ACTIVE=()
for mode in $MODES; do
  case $mode in
    raw) setup_raw ;;
    vxlan) setup_vxlan ;;
    wireguard-go)
      if [[ $WG_GO == yes ]]; then setup_wg go
      else SKIP[$mode]="not installed (apt-get install --no-install-recommends wireguard-go wireguard-tools; candidate ${WG_GO_CANDIDATE:-none})"; continue; fi ;;
    wg-kernel)
      if [[ $KERNEL_WG == yes ]] && command -v wg >/dev/null; then setup_wg kernel
      else SKIP[$mode]="this kernel has no WireGuard module (ip link add type wireguard fails)"; continue; fi ;;
    weft | weft-alt) setup_weft "$mode" || continue ;;
    *) die "unknown mode $mode" ;;
  esac
  check_path "$mode" || continue
  start_iperf_server "$mode"
  ACTIVE+=("$mode")
done
sleep 0.5

# ---------------------------------------------------------------- measurement
proc_ticks() { # PIDS...: utime+stime in clock ticks
  local sum=0 p f
  for p in "$@"; do
    [[ -r /proc/$p/stat ]] || continue
    f=$(sed 's/.*) //' "/proc/$p/stat")
    # after "pid (comm) ": state is field 1, utime field 12, stime field 13
    sum=$((sum + $(awk '{print $12 + $13}' <<<"$f")))
  done
  echo "$sum"
}
worker_ticks() { # PIDS...: "NODE:THREAD TICKS" for every data-plane worker thread (weft-worker-*)
  local i=0 p t
  for p in "$@"; do
    for t in /proc/"$p"/task/*; do
      [[ $(cat "$t/comm" 2>/dev/null) == weft-worker-* ]] || continue
      echo "n$i:w$(sed 's/^weft-worker-//' "$t/comm") $(sed 's/.*) //' "$t/stat" | awk '{print $12 + $13}')"
    done
    i=$((i + 1))
  done
}
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
rss_mb() { # PIDS...: summed VmRSS in MB
  local kb=0 p v
  for p in "$@"; do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    kb=$((kb + ${v:-0}))
  done
  awk -v k="$kb" 'BEGIN {printf "%.1f", k / 1024}'
}
ping_avg() { sed -n 's/^rtt min\/avg\/max\/mdev = [^/]*\/\([^/]*\)\/.*/\1/p' "$1"; }
ping_pct() { # MODE PERCENT: percentile of the pooled load-ping times (nearest rank; lost = slowest)
  local sent
  sent=$(awk -v m="$1" '$1 == m && $2 == "pings_sent" {n += $3} END {print n + 0}' "$RESULTS")
  sort -g "$TMP/pings-$1" 2>/dev/null |
    awk -v p="$2" -v n="$sent" '{v[NR] = $1} END {if (n == 0) {print "-"; exit}
      i = int((p * n + 99) / 100); if (i < 1) i = 1; if (i > NR) print "lost"; else print v[i]}'
}
ping_under() { # MODE MS: share of load pings answered within MS, in percent
  local sent
  sent=$(awk -v m="$1" '$1 == m && $2 == "pings_sent" {n += $3} END {print n + 0}' "$RESULTS")
  awk -v ms="$2" -v n="$sent" '$1 < ms {k++} END {if (n == 0) print "-"; else printf "%.1f", 100 * k / n}' \
    "$TMP/pings-$1" 2>/dev/null || echo "-"
}
record() { echo "$1 $2 $3" >>"$RESULTS"; }
udp_rcvbuf_errors() { # summed RcvbufErrors of both nodes' UDP (/proc/net/snmp, per namespace)
  local n s=0 v
  for n in "${NODES[@]}"; do
    v=$(nsx "$n" cat /proc/net/snmp | awk '/^Udp: [0-9]/ {print $6}')
    s=$((s + ${v:-0}))
  done
  echo "$s"
}

iperf() { # MODE STREAMS -> prints "bits_per_second bytes"
  local mode=$1 streams=$2 out="$TMP/iperf-client.json"
  timeout $((DURATION + 20)) ip netns exec "${SRC[$mode]}" iperf3 -c "${DST[$mode]}" -t "$DURATION" -P "$streams" \
    --connect-timeout 3000 -J >"$out" 2>/dev/null || true
  jq -r '"\(.end.sum_received.bits_per_second // 0) \(.end.sum_received.bytes // 0)"' "$out" 2>/dev/null || echo "0 0"
}

measure() { # MODE
  local mode=$1 p0 p1 m0 m1 d0 bytes=0 bps b ping_pid pcount
  # shellcheck disable=SC2086
  local procs=(${PROCS[$mode]})
  nsx "${SRC[$mode]}" ping -n -q -c 20 -i 0.05 -W 1 "${DST[$mode]}" >"$TMP/ping-idle" 2>&1 || true
  record "$mode" rtt_idle "$(ping_avg "$TMP/ping-idle")"
  p0=$(proc_ticks "${procs[@]}"); m0=$(machine_ticks); d0=$(udp_rcvbuf_errors)
  local perf_pid=
  if [[ -n ${BENCH_PERF_DIR:-} ]]; then
    timeout $((DURATION + 5)) perf record -q -a -g -F 499 -o "$BENCH_PERF_DIR/$mode-$ROUND.data" \
      -- sleep "$DURATION" >/dev/null 2>&1 &
    perf_pid=$!; PIDS+=("$perf_pid")
  fi
  read -r bps b < <(iperf "$mode" 1)
  [[ -z $perf_pid ]] || wait "$perf_pid" || true
  record "$mode" tcp1 "$(awk -v v="$bps" 'BEGIN {printf "%.0f", v / 1e6}')"
  bytes=$(awk -v a="$bytes" -v b="$b" 'BEGIN {printf "%.0f", a + b}')
  pcount=$(((DURATION - 1) * 20))
  timeout $((DURATION + 10)) ip netns exec "${SRC[$mode]}" ping -n -c "$pcount" -i 0.05 -W 1 "${DST[$mode]}" \
    >"$TMP/ping-load" 2>&1 &
  ping_pid=$!; PIDS+=("$ping_pid")
  # Scaling on 2 CPUs cannot show in throughput (DESIGN.md "Test hosts"): record how busy each
  # worker was and whether workers ever waited on a lock (futex calls) during the 4-stream run.
  local w0="" stat_pid="" is_weft=""
  [[ $mode == weft* ]] && is_weft=1
  if [[ -n $is_weft ]]; then
    w0=$(worker_ticks "${procs[@]}")
    if command -v perf >/dev/null; then
      timeout $((DURATION + 5)) perf stat -e syscalls:sys_enter_futex --per-thread -x, -o "$TMP/futex-$mode" \
        -p "$(IFS=,; echo "${procs[*]}")" -- sleep "$DURATION" >/dev/null 2>&1 &
      stat_pid=$!; PIDS+=("$stat_pid")
    fi
  fi
  read -r bps b < <(iperf "$mode" 4)
  wait "$ping_pid" || true
  if [[ -n $is_weft ]]; then
    local key ticks before
    while read -r key ticks; do
      before=$(awk -v k="$key" '$1 == k {print $2}' <<<"$w0")
      record "$mode" "busy_$key" "$(awk -v d=$((ticks - ${before:-ticks})) -v hz="$CLK_TCK" -v s="$DURATION" 'BEGIN {printf "%.0f", d / hz / s * 100}')"
    done < <(worker_ticks "${procs[@]}")
    if [[ -n $stat_pid ]]; then
      wait "$stat_pid" || true
      record "$mode" futex "$(awk -F, '$1 ~ /^weft-worker/ {n += $2} END {printf "%.0f", n}' "$TMP/futex-$mode" 2>/dev/null)"
    fi
  fi
  record "$mode" tcp4 "$(awk -v v="$bps" 'BEGIN {printf "%.0f", v / 1e6}')"
  record "$mode" rtt_load "$(ping_avg "$TMP/ping-load")"
  # Every reply time of every round, pooled for the percentiles; a lost ping counts as slow.
  sed -n 's/.* time=\([0-9.]*\) ms.*/\1/p' "$TMP/ping-load" >>"$TMP/pings-$mode"
  record "$mode" pings_sent "$pcount"
  bytes=$(awk -v a="$bytes" -v b="$b" 'BEGIN {printf "%.0f", a + b}')
  p1=$(proc_ticks "${procs[@]}"); m1=$(machine_ticks)
  record "$mode" drops "$(($(udp_rcvbuf_errors) - d0))"
  if [[ $bytes != 0 ]]; then
    record "$mode" cpu_machine "$(awk -v d=$((m1 - m0)) -v hz="$CLK_TCK" -v by="$bytes" 'BEGIN {printf "%.2f", d / hz / (by / 1e9)}')"
    if ((${#procs[@]})); then
      record "$mode" cpu_proc "$(awk -v d=$((p1 - p0)) -v hz="$CLK_TCK" -v by="$bytes" 'BEGIN {printf "%.2f", d / hz / (by / 1e9)}')"
      record "$mode" rss "$(rss_mb "${procs[@]}")"
    fi
  fi
}

log "modes: ${ACTIVE[*]:-none}; $ROUNDS rounds of ${DURATION}s iperf3 runs (interleaved)"
for ((r = 1; r <= ROUNDS; r++)); do
  for mode in "${ACTIVE[@]}"; do
    log "round $r/$ROUNDS: $mode"; ROUND=$r
    measure "$mode"
  done
done

# ---------------------------------------------------------------- report
median() { # MODE METRIC
  awk -v m="$1" -v k="$2" '$1 == m && $2 == k && $3 != "" {print $3}' "$RESULTS" | sort -g |
    awk '{v[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
ratio() { # VALUE BASE
  awk -v v="$1" -v b="$2" 'BEGIN {if (v == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2fx", v / b}'
}

echo
echo "weft tunnel bench: $(uname -r), $(nproc) CPUs, ${ROUNDS} rounds x ${DURATION}s, pod MTU $MTU, medians"
echo "kernel WireGuard: $KERNEL_WG   wireguard-go: installed=$WG_GO (Debian candidate ${WG_GO_CANDIDATE:-none})"
for mode in weft weft-alt; do
  [[ -n ${OFFLOAD[$mode]:-} ]] && echo "$mode offload: ${OFFLOAD[$mode]}"
done
[[ -n ${OFFLOAD[weft-alt]:-} ]] && echo "weft-alt: ${WEFT_ALT_BIN} ${WEFT_ALT_ENV}"
printf '%-13s %10s %7s %10s %7s %9s %9s %8s %8s %7s %10s %10s %8s %8s\n' \
  mode "tcp1 Mb/s" "x raw" "tcp4 Mb/s" "x raw" "rtt ms" "load ms" "p50 ms" "p99 ms" "<5ms %" "cpu s/GB" "mach s/GB" "rss MB" "drops"
base1=$(median raw tcp1); base4=$(median raw tcp4)
for mode in "${ACTIVE[@]}"; do
  t1=$(median "$mode" tcp1); t4=$(median "$mode" tcp4); rl=$(median "$mode" rtt_load)
  printf '%-13s %10s %7s %10s %7s %9s %9s %8s %8s %7s %10s %10s %8s %8s\n' "$mode" \
    "$t1" "$(ratio "$t1" "$base1")" "$t4" "$(ratio "$t4" "$base4")" \
    "$(median "$mode" rtt_idle)" "$rl" "$(ping_pct "$mode" 50)" "$(ping_pct "$mode" 99)" "$(ping_under "$mode" 5)" \
    "$(median "$mode" cpu_proc)" "$(median "$mode" cpu_machine)" "$(median "$mode" rss)" "$(median "$mode" drops)"
done
# weft against the best userspace tunnel measured in this run, and against VXLAN.
best=""
for mode in wireguard-go; do
  [[ " ${ACTIVE[*]} " == *" $mode "* ]] && best=$mode
done
if [[ " ${ACTIVE[*]} " == *" weft "* ]]; then
  for base in $best vxlan; do
    [[ " ${ACTIVE[*]} " == *" $base "* ]] || continue
    echo "weft / $base: tcp1 $(ratio "$(median weft tcp1)" "$(median "$base" tcp1)"), tcp4 $(ratio "$(median weft tcp4)" "$(median "$base" tcp4)"), rtt idle $(ratio "$(median weft rtt_idle)" "$(median "$base" rtt_idle)"), rtt load $(ratio "$(median weft rtt_load)" "$(median "$base" rtt_load)"), mach s/GB $(ratio "$(median weft cpu_machine)" "$(median "$base" cpu_machine)")$( [[ $base != vxlan ]] && echo ", cpu s/GB $(ratio "$(median weft cpu_proc)" "$(median "$base" cpu_proc)")")"
  done
fi
if [[ " ${ACTIVE[*]} " == *" weft-alt "* && " ${ACTIVE[*]} " == *" weft "* ]]; then
  echo "weft-alt / weft: tcp1 $(ratio "$(median weft-alt tcp1)" "$(median weft tcp1)"), tcp4 $(ratio "$(median weft-alt tcp4)" "$(median weft tcp4)"), rtt load $(ratio "$(median weft-alt rtt_load)" "$(median weft rtt_load)"), p99 $(ratio "$(ping_pct weft-alt 99)" "$(ping_pct weft 99)"), cpu s/GB $(ratio "$(median weft-alt cpu_proc)" "$(median weft cpu_proc)")"
fi
for mode in "${ACTIVE[@]}"; do
  [[ $mode == weft* ]] || continue
  keys=$(awk -v m="$mode" '$1 == m && $2 ~ /^busy_/ {print $2}' "$RESULTS" | sort -u)
  [[ -n $keys ]] || continue
  line=""
  for k in $keys; do line="$line ${k#busy_} $(median "$mode" "$k")%"; done
  steps=0
  for i in 0 1; do
    steps=$((steps + $(weft_status "$mode$i" | jq -r '.dataplane.busy_step_downs // 0' 2>/dev/null || echo 0)))
  done
  echo "$mode workers during the 4-stream run (median CPU busy per thread):$line; futex calls by workers: $(median "$mode" futex); real-time step-downs in the whole run: $steps"
done
for mode in "${!SKIP[@]}"; do echo "skipped $mode: ${SKIP[$mode]}"; done
echo "cpu s/GB: user+sys of the tunnel's own processes per GB received (weft routers, wireguard-go);"
echo "mach s/GB: all CPU time of the machine per GB (includes iperf3, softirq and anything else running)."
echo "load ms: mean ping RTT during the 4-stream run (20 pings/s); p50/p99: over"
echo "  the pings of all rounds pooled (a lost ping counts as the slowest); <5ms %: share answered within 5 ms."
echo "drops: UDP receive-buffer errors (RcvbufErrors) of both nodes during the mode's two iperf3 runs."
