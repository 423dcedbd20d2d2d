# shellcheck shell=bash
# bench/lib.sh: what every namespace benchmark shares (sourced, not run). The sourcing script
# sets PFX (weft-b-<pid>) and CMD_TIMEOUT first. Touches only namespaces named weft-b-<pid>-*
# and /tmp/weft-b-<pid>-* directories.

log() { echo "[bench] $*" >&2; }
die() { echo "[bench] error: $*" >&2; exit 1; }
t() { timeout "$CMD_TIMEOUT" "$@"; }
nsx() { local ns=$1; shift; timeout "$CMD_TIMEOUT" ip netns exec "$ns" "$@"; }
mkns() { t ip netns add "$1"; t ip -n "$1" link set lo up; }

# Kills every process still inside namespace $1 (three tries).
kill_ns_procs() {
  local ns=$1 p
  for _ in 1 2 3; do
    p=$(t ip netns pids "$ns" 2>/dev/null || true)
    [[ -z $p ]] && return 0
    # shellcheck disable=SC2086
    kill -9 $p 2>/dev/null || true
    sleep 0.1
  done
}

# Kills the PIDs given (what the script started), then whatever is left in this run's
# namespaces, then deletes the namespaces. Never touches anything else.
teardown_run() {
  local pid ns
  for pid in "$@"; do kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${PFX}-"); do
    kill_ns_procs "$ns"
    t ip netns del "$ns"
  done
}

# Leftovers of killed runs: weft-b-<pid>-* namespaces and /tmp dirs whose pid is gone.
cleanup_stale() {
  local ns pid d
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^weft-b-[0-9]+-' || true); do
    pid=${ns#weft-b-}; pid=${pid%%-*}
    [[ -d /proc/$pid ]] && continue
    log "removing stale namespace $ns"
    kill_ns_procs "$ns"
    t ip netns del "$ns" || true
  done
  for d in /tmp/weft-b-*; do
    [[ -d $d ]] || continue
    pid=${d#/tmp/weft-b-}; pid=${pid%%-*}
    [[ $pid =~ ^[0-9]+$ && ! -d /proc/$pid ]] && rm -rf "$d"
  done
  return 0
}
