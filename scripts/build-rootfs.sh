#!/usr/bin/env bash
# Builds, once, a Debian root filesystem for the tests that run weft in
# another userland (tests/oldhost.rs: the plugin on Debian 11; tests/image.rs:
# the Dockerfile's runtime stage), and prints its path. Cached outside the
# repo, in ${WEFT_TEST_CACHE:-/var/cache/weft-test}/SUITE-KEY, so that only
# the first run on a machine downloads anything (about 1-2 minutes each).
#
#   scripts/build-rootfs.sh [--slim] SUITE KEY [PACKAGE...]
#
# --slim does what turns Debian's minbase into the `debian:SUITE-slim`
# image the Dockerfile starts from (debuerreotype's slimify): no manual
# pages, info, documentation (copyright files kept) or translations, also
# for packages installed later (a dpkg path-exclude file).
# KEY names what the root filesystem was built from (the tests pass a hash
# of the Dockerfile, or "minbase"): a changed Dockerfile gets a new one.
# debootstrap --variant=minbase follows Depends only, like `apt-get install
# --no-install-recommends`; the apt lists are removed as in the Dockerfile.
# Needs root and debootstrap (.ci/run installs it).
set -euo pipefail
slim=0
if [[ ${1-} == --slim ]]; then
    slim=1
    shift
fi
suite=$1
key=$2
shift 2
cache=${WEFT_TEST_CACHE:-/var/cache/weft-test}
dest=$cache/$suite-$key
if [[ -e $dest/.complete ]]; then
    echo "$dest"
    exit 0
fi
mkdir -p "$cache"
# Build beside the destination and rename at the end: a run killed half way
# leaves a .build-* directory, never a root filesystem that looks complete.
tmp=$(mktemp -d "$cache/.build-$suite-$key.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
include=$(IFS=,; echo "$*")
if ! debootstrap --variant=minbase ${include:+--include="$include"} \
    "$suite" "$tmp" "${WEFT_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$tmp.log" 2>&1; then
    tail -20 "$tmp.log" >&2
    echo "build-rootfs.sh: debootstrap $suite failed (log above; full log $tmp.log)" >&2
    exit 1
fi
rm -f "$tmp.log"
if [[ $slim == 1 ]]; then
    cat >"$tmp/etc/dpkg/dpkg.cfg.d/docker-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
SLIM
    find "$tmp/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$tmp/usr/share/doc" -mindepth 1 -type d -empty -delete
    find "$tmp/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    for d in groff info linda lintian man; do
        rm -rf "${tmp:?}/usr/share/$d"/*
    done
fi
rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/cache/apt/*.bin
touch "$tmp/.complete"
rm -rf "$dest"
mv -T "$tmp" "$dest"
trap - EXIT
echo "$dest"
