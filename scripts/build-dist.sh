#!/bin/sh
# Builds the release binaries for shipping: the CNI plugin statically
# linked (the kubelet runs it on the host, whose glibc may be older than the
# build's: Debian 11, Ubuntu 20.04, RHEL 8, Amazon Linux 2), and both
# binaries stripped, their debug info kept beside them for symbolising
# crash reports (issue 17, "Static plugin and size").
#
# `scripts/build-dist.sh [OUT]` (default target/release/dist) leaves
#   OUT/weft, OUT/weft-cni              stripped, with a .gnu_debuglink
#   OUT/weft.debug, OUT/weft-cni.debug  the debug info (objcopy --only-keep-debug)
#
# Only the plugin is static, and only its final link: `cargo rustc` passes
# `-C target-feature=+crt-static` to the plugin's own crate and reuses every
# dependency the ordinary release build compiled, so this adds one link, not
# a second build. (crt-static is a link-time choice for glibc: std's and
# libc's link attributes are cfg'd on it and resolved in the final crate.)
# The plugin does no NSS lookups (no user or host names), the one thing a
# static glibc cannot do. The router stays dynamic: it resolves --peer names.
set -eu
cd "$(dirname "$0")/.."
out=${1:-target/release/dist}
cargo build --release --locked -p weft
cargo rustc --release --locked -p weft-cni --bin weft-cni -- -C target-feature=+crt-static
mkdir -p "$out"
for bin in weft weft-cni; do
    objcopy --only-keep-debug "target/release/$bin" "$out/$bin.debug"
    # The link names the debug file by its base name (it is looked up beside
    # the binary, or in /usr/lib/debug).
    objcopy --strip-all --add-gnu-debuglink="$out/$bin.debug" "target/release/$bin" "$out/$bin"
done
