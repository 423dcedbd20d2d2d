#!/usr/bin/env bash
# bench/cni.sh: CNI ADD and DEL latency of weft against the reference bridge + host-local
# plugins (Debian's containernetworking-plugins), measured in the same run, interleaved; and
# `podman run --rm` with the weft network against `--network none`.
#
# Setup (namespaces named weft-cb-<pid>-*, deleted on exit; files under a mktemp dir):
#   node ns: a bridge "underlay" with 192.0.2.10/24, a real `weft router` (single node,
#            --ipalloc-init seed=b0) with its API socket in the temp dir.
#   pod ns:  one namespace reused by every ADD/DEL pair.
# Each sample is one plugin process (fork+exec included, the same for both plugins).
#
# Usage: bench/cni.sh [-n ADD/DEL PAIRS] [-p PODMAN RUNS]
#        WEFT_BIN (default target/release/weft), WEFT_CNI_BIN (default target/release/weft-cni),
#        CNI_PLUGINS (default /usr/lib/cni)
set -euo pipefail

N=${BENCH_N:-100}
P=${BENCH_PODMAN:-10}
while getopts "n:p:h" opt; do
  case $opt in
    n) N=$OPTARG ;;
    p) P=$OPTARG ;;
    *) sed -n '2,16p' "$0"; exit 2 ;;
  esac
done
[[ $N =~ ^[0-9]+$ && $N -ge 5 && $N -le 5000 ]] || { echo "-n must be 5..5000" >&2; exit 2; }
[[ $P =~ ^[0-9]+$ && $P -le 200 ]] || { echo "-p must be 0..200" >&2; exit 2; }

TARGET=${CARGO_TARGET_DIR:-target}
WEFT_BIN=$(realpath "${WEFT_BIN:-$TARGET/release/weft}")
WEFT_CNI_BIN=$(realpath "${WEFT_CNI_BIN:-$TARGET/release/weft-cni}")
CNI_PLUGINS=${CNI_PLUGINS:-/usr/lib/cni}
[[ -x $WEFT_BIN && -x $WEFT_CNI_BIN ]] || { echo "build first: cargo build --workspace --release" >&2; exit 1; }
[[ -x $CNI_PLUGINS/bridge && -x $CNI_PLUGINS/host-local ]] || { echo "need containernetworking-plugins in $CNI_PLUGINS" >&2; exit 1; }

PFX="weft-cb-$$"
NODE="$PFX-node"
POD="$PFX-pod"
TMP=$(mktemp -d "/tmp/${PFX}-XXXX")
ROUTER_PID=""
log() { echo "[bench] $*" >&2; }

cleanup() {
  set +e
  if [[ -n ${PODMAN_READY:-} ]]; then podman_ rm --all --force --time 0 >/dev/null 2>&1; fi
  [[ -n $ROUTER_PID ]] && kill "$ROUTER_PID" 2>/dev/null && wait "$ROUTER_PID" 2>/dev/null
  for ns in "$POD" "$NODE"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

ip netns add "$NODE"
ip netns add "$POD"
ip -n "$NODE" link set lo up
ip -n "$POD" link set lo up
ip -n "$NODE" link add u0 type bridge
ip -n "$NODE" addr add 192.0.2.10/24 dev u0
ip -n "$NODE" link set u0 up
ip netns exec "$NODE" sysctl -qw net.ipv4.ip_forward=1

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/secret"; echo >>"$TMP/secret"
SOCK="$TMP/weft.sock"
nsenter --net="/run/netns/$NODE" "$WEFT_BIN" router --name b0 --listen 192.0.2.10:6783 \
  --secret-file "$TMP/secret" --state-dir "$TMP/state" --api "$SOCK" --ipalloc-init seed=b0 \
  >"$TMP/router.log" 2>&1 &
ROUTER_PID=$!

WEFT_CONF="{\"cniVersion\":\"1.0.0\",\"name\":\"weft\",\"type\":\"weft\",\"socket\":\"$SOCK\",\"mtu\":0}"
BRIDGE_CONF="{\"cniVersion\":\"1.0.0\",\"name\":\"bench-bridge\",\"type\":\"bridge\",\"bridge\":\"cnibr0\",\"isGateway\":true,\"ipMasq\":false,\"ipam\":{\"type\":\"host-local\",\"ranges\":[[{\"subnet\":\"10.99.0.0/16\"}]],\"routes\":[{\"dst\":\"0.0.0.0/0\"}],\"dataDir\":\"$TMP/host-local\"}}"

# plugin BIN COMMAND ID CONF: one invocation in the node's namespace; prints the ms it took.
plugin() {
  local bin=$1 cmd=$2 id=$3 conf=$4 t0 t1
  t0=$(date +%s%N)
  if ! echo "$conf" | CNI_COMMAND=$cmd CNI_CONTAINERID=$id CNI_NETNS="/run/netns/$POD" CNI_IFNAME=eth0 \
      CNI_PATH=$CNI_PLUGINS timeout 20 nsenter --net="/run/netns/$NODE" "$bin" >"$TMP/out" 2>&1; then
    log "$(basename "$bin") $cmd failed: $(cat "$TMP/out")"; exit 1
  fi
  t1=$(date +%s%N)
  echo $(( (t1 - t0) / 1000 ))
}

for _ in $(seq 1 100); do
  if echo "{\"cniVersion\":\"1.1.0\",\"name\":\"weft\",\"type\":\"weft\",\"socket\":\"$SOCK\"}" |
     CNI_COMMAND=STATUS nsenter --net="/run/netns/$NODE" "$WEFT_CNI_BIN" >/dev/null 2>&1; then break; fi
  sleep 0.2
done

log "$N ADD/DEL pairs per plugin, interleaved"
: >"$TMP/weft-add"; : >"$TMP/weft-del"; : >"$TMP/bridge-add"; : >"$TMP/bridge-del"
for i in $(seq 1 "$N"); do
  plugin "$WEFT_CNI_BIN" ADD "b$i" "$WEFT_CONF" >>"$TMP/weft-add"
  plugin "$WEFT_CNI_BIN" DEL "b$i" "$WEFT_CONF" >>"$TMP/weft-del"
  plugin "$CNI_PLUGINS/bridge" ADD "b$i" "$BRIDGE_CONF" >>"$TMP/bridge-add"
  plugin "$CNI_PLUGINS/bridge" DEL "b$i" "$BRIDGE_CONF" >>"$TMP/bridge-del"
done

# pct FILE P: the P-th percentile (nearest rank) of microsecond samples, in ms.
pct() { sort -n "$1" | awk -v p="$2" '{a[NR]=$1} END {i=int((NR-1)*p+0.5)+1; printf "%.2f", a[i]/1000}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }

echo "CNI latency, $N samples each (ms; ratio = weft / bridge+host-local)"
printf "%-8s %-20s %8s %8s\n" op plugin p50 p99
for op in add del; do
  for p in weft bridge; do
    label=$([[ $p == weft ]] && echo weft || echo bridge+host-local)
    printf "%-8s %-20s %8s %8s\n" "${op^^}" "$label" "$(pct "$TMP/$p-$op" 0.5)" "$(pct "$TMP/$p-$op" 0.99)"
  done
  printf "%-8s %-20s %8s %8s\n" "${op^^}" "ratio" \
    "$(ratio "$(pct "$TMP/weft-$op" 0.5)" "$(pct "$TMP/bridge-$op" 0.5)")" \
    "$(ratio "$(pct "$TMP/weft-$op" 0.99)" "$(pct "$TMP/bridge-$op" 0.99)")"
done

if [[ $P -gt 0 ]] && command -v podman >/dev/null && command -v runc >/dev/null && [[ -x /bin/busybox ]]; then
  D="$TMP/podman"
  mkdir -p "$D/net.d" "$D/bin" "$D/rootfs/bin" "$D/rootfs/etc" "$D/rootfs/proc" "$D/rootfs/sys" "$D/rootfs/dev"
  cp "$WEFT_CNI_BIN" "$D/bin/weft"
  for f in "$CNI_PLUGINS"/*; do ln -sf "$f" "$D/bin/"; done
  echo "{\"cniVersion\":\"1.0.0\",\"name\":\"weft\",\"plugins\":[{\"type\":\"weft\",\"socket\":\"$SOCK\",\"mtu\":0}]}" >"$D/net.d/weft.conflist"
  cat >"$D/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["$D/bin"]
network_config_dir = "$D/net.d"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$D/events.log"
tmp_dir = "$D/tmp"
volume_path = "$D/volumes"
EOF
  printf '[storage]\ndriver = "vfs"\ngraphroot = "%s/graph"\nrunroot = "%s/run"\n' "$D" "$D" >"$D/storage.conf"
  podman_() { CONTAINERS_CONF="$D/containers.conf" CONTAINERS_STORAGE_CONF="$D/storage.conf" \
    timeout 60 nsenter --net="/run/netns/$NODE" podman "$@"; }
  cp /bin/busybox "$D/rootfs/bin/"
  for a in $(/bin/busybox --list); do [[ $a == busybox ]] || ln -s busybox "$D/rootfs/bin/$a"; done
  tar -C "$D/rootfs" -cf "$D/rootfs.tar" .
  podman_ import "$D/rootfs.tar" weft-busybox >/dev/null 2>&1
  PODMAN_READY=1
  podman_ run --rm --network none weft-busybox true >/dev/null   # warm caches
  : >"$D/none"; : >"$D/weft"
  log "$P podman run --rm per network, interleaved"
  for _ in $(seq 1 "$P"); do
    for net in none weft; do
      t0=$(date +%s%N)
      podman_ run --rm --network "$net" weft-busybox true </dev/null >/dev/null
      t1=$(date +%s%N)
      echo $(( (t1 - t0) / 1000 )) >>"$D/$net"
    done
  done
  echo
  echo "podman run --rm busybox true, $P runs each (ms)"
  printf "%-20s %8s %8s\n" network p50 max
  for net in none weft; do
    printf "%-20s %8s %8s\n" "--network $net" "$(pct "$D/$net" 0.5)" "$(pct "$D/$net" 1.0)"
  done
  printf "%-20s %8s\n" "weft - none (p50)" \
    "$(awk -v a="$(pct "$D/weft" 0.5)" -v b="$(pct "$D/none" 0.5)" 'BEGIN {printf "%.2f", a-b}')"
else
  echo "podman comparison skipped (needs podman, runc, busybox-static and -p > 0)"
fi
