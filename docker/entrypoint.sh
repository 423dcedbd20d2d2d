#!/bin/sh
# The weft image's entrypoint (see deploy/README.md).
#
# `weft-entrypoint [FLAGS...]` installs the CNI plugin and its network config
# onto the host, then becomes `weft router FLAGS...` (exec: same PID, so
# SIGTERM from the kubelet reaches the router itself).
# `weft-entrypoint COMMAND ...` (status, connect, ...) just runs `weft COMMAND`.
# `weft-entrypoint node-sysctls` is the DaemonSet's init container: it sets
# the node's sysctls the router cannot set from its own container (below).
#
# Every install is atomic and idempotent: the file is written beside its
# destination and renamed over it, and only when its content changed, so a
# container restart never leaves the kubelet a half-written plugin or config,
# and a plugin that is executing is never overwritten in place. The plugin
# goes first: a node never sees a config whose plugin is missing.
#
# Environment (defaults suit deploy/daemonset.yaml, which mounts the host's
# /opt/cni/bin and /etc/cni/net.d under /host):
#   WEFT_CNI_BIN_DIR    where the plugin goes          (/host/opt/cni/bin)
#   WEFT_CNI_CONF_DIR   where the conflist goes        (/host/etc/cni/net.d)
#   WEFT_CNI_CONF_NAME  the conflist's file name       (10-weft.conflist)
#   WEFT_CNI_PLUGIN     the plugin in this image       (/usr/local/bin/weft-cni)
#   WEFT_CNI_MTU        the MTU the plugin uses, 0 = ask the router (0)
#   WEFT_API            the router's socket, as the host sees it (/run/weft/weft.sock);
#                       the router reads the same variable
#   WEFT_INSTALL_CNI    0 to skip installing (1)
#   WEFT_BIN            the weft binary                (weft, on PATH)
#   WEFT_IPALLOC_RANGE  node-sysctls: the pod ranges (the router's variable)
#   WEFT_PROC_SYS       node-sysctls: where /proc/sys is (/proc/sys)
set -eu

log() {
    echo "weft-entrypoint: $*" >&2
}

# install_file SRC DEST MODE: copy SRC to DEST atomically, only if it differs.
install_file() {
    src=$1
    dest=$2
    mode=$3
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        log "$dest is up to date"
        return 0
    fi
    tmp="$(dirname "$dest")/.$(basename "$dest").weft-tmp.$$"
    # Never leave the temporary file behind, whatever fails.
    trap 'rm -f "$tmp"' EXIT
    cp "$src" "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dest"
    trap - EXIT
    log "installed $dest"
}

install_cni() {
    bin_dir=${WEFT_CNI_BIN_DIR:-/host/opt/cni/bin}
    conf_dir=${WEFT_CNI_CONF_DIR:-/host/etc/cni/net.d}
    conf_name=${WEFT_CNI_CONF_NAME:-10-weft.conflist}
    plugin=${WEFT_CNI_PLUGIN:-/usr/local/bin/weft-cni}
    socket=${WEFT_API:-/run/weft/weft.sock}
    mtu=${WEFT_CNI_MTU:-0}
    case $mtu in
        '' | *[!0-9]*)
            log "WEFT_CNI_MTU must be a number (0 = ask the router), not '$mtu'"
            exit 2
            ;;
    esac
    case $socket in
        *\"* | *\\*)
            log "WEFT_API must not contain quotes or backslashes: '$socket'"
            exit 2
            ;;
    esac
    if [ ! -f "$plugin" ]; then
        log "the CNI plugin $plugin is missing from this image"
        exit 1
    fi
    mkdir -p "$bin_dir" "$conf_dir"
    install_file "$plugin" "$bin_dir/weft" 0755

    # The same chain as cni/weft.conflist: weft, then the reference
    # `portmap` plugin for pods' hostPorts (the kubelet passes them as the
    # portMappings capability; portmap must be in the host's CNI bin dir).
    if [ ! -x "$bin_dir/portmap" ]; then
        log "$bin_dir/portmap is missing: pods' hostPorts will not answer (install the reference CNI plugins)"
    fi
    staged=$(mktemp)
    cat >"$staged" <<CONF
{
  "cniVersion": "1.0.0",
  "name": "weft",
  "plugins": [
    {
      "type": "weft",
      "socket": "$socket",
      "mtu": $mtu
    },
    {
      "type": "portmap",
      "capabilities": { "portMappings": true },
      "snat": true
    }
  ]
}
CONF
    install_file "$staged" "$conf_dir/$conf_name" 0644
    rm -f "$staged"
}

# node_sysctls: with an IPv6 pod range (an item of WEFT_IPALLOC_RANGE with a
# colon, or `ipv6`), turn on net.ipv6.conf.all.forwarding. Linux takes it only
# through /proc/sys (no per-interface switch for IPv6 over netlink, unlike the
# IPv4 forwarding the router sets itself), and /proc/sys is read-only in the
# router's unprivileged container; this runs privileged, writes that one
# file, and exits. Without an IPv6 range it writes nothing. If the write is
# refused it says so and exits 0: the router still starts, serves IPv4, and
# reports `forwarding6: off (...)` with the setting to make.
node_sysctls() {
    ranges=$(printf '%s' "${WEFT_IPALLOC_RANGE:-}" | tr -d ' \t')
    case ",$ranges," in
        *:* | *,ipv6,*) ;;
        *)
            log "no IPv6 pod range in '${WEFT_IPALLOC_RANGE:-}': no sysctl to set"
            return 0
            ;;
    esac
    file=${WEFT_PROC_SYS:-/proc/sys}/net/ipv6/conf/all/forwarding
    if [ "$(cat "$file" 2>/dev/null)" = 1 ]; then
        log "net.ipv6.conf.all.forwarding is 1 already"
    elif (echo 1 >"$file") 2>/dev/null; then
        log "set net.ipv6.conf.all.forwarding=1 for the IPv6 pod range"
    else
        log "cannot write $file (not privileged?): pods' IPv6 is not forwarded until net.ipv6.conf.all.forwarding=1 is set on the node"
    fi
}

weft=${WEFT_BIN:-weft}
case ${1-} in
    node-sysctls)
        node_sysctls
        ;;
    -* | '')
        if [ "${WEFT_INSTALL_CNI:-1}" != 0 ]; then
            install_cni
        fi
        exec "$weft" router "$@"
        ;;
    *)
        exec "$weft" "$@"
        ;;
esac
