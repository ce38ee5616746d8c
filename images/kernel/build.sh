#!/bin/bash
# Build duet's microVM guest kernel from Debian's linux-source-6.1:
# `make tinyconfig` + config.fragment, then vmlinux and bzImage.
#
# Result (cached outside the repo, keyed by fragment + source version):
#   ${XDG_CACHE_HOME:-$HOME/.cache}/duet/kernel/<hash>/{vmlinux,bzImage,config}
#   ${XDG_CACHE_HOME:-$HOME/.cache}/duet/kernel/current -> <hash>
# A second run with the same inputs only prints the cached path.
set -euo pipefail

usage() {
    cat <<EOF
usage: images/kernel/build.sh [--install-source] [--jobs N] [--rebuild] [--variant NAME]

  --install-source  run 'apt-get install linux-source-6.1' when the source
                    tarball is missing (needs root)
  --jobs N          parallel make jobs (default: nproc = $(nproc))
  --rebuild         ignore the cached result for these inputs
  --variant NAME    also apply images/kernel/NAME.fragment (a test-only kernel,
                    e.g. "hostile": /dev/mem for the hostile-guest test) and
                    link the result as <cache>/NAME instead of <cache>/current

Environment:
  DUET_KERNEL_SOURCE  kernel source tarball (default /usr/src/linux-source-6.1.tar.xz)
  XDG_CACHE_HOME      cache root (default \$HOME/.cache)
EOF
}

# Bump when this script changes what it produces from the same inputs.
readonly RECIPE=1
readonly DEFAULT_SOURCE=/usr/src/linux-source-6.1.tar.xz

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fragment="$here/config.fragment"
source_tar="${DUET_KERNEL_SOURCE:-$DEFAULT_SOURCE}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/duet/kernel"
jobs="$(nproc)"
install_source=0
rebuild=0
variant=""

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --install-source) install_source=1 ;;
        --jobs) [ $# -ge 2 ] || die "--jobs needs a number"; jobs="$2"; shift ;;
        --rebuild) rebuild=1 ;;
        --variant) [ $# -ge 2 ] || die "--variant needs a name"; variant="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

[ -f "$fragment" ] || die "config fragment not found: $fragment"
fragments=("$fragment")
link=current
if [ -n "$variant" ]; then
    [[ "$variant" =~ ^[a-z0-9-]+$ ]] && [ "$variant" != current ] || die "bad variant name: $variant"
    fragments+=("$here/$variant.fragment")
    [ -f "${fragments[1]}" ] || die "config fragment not found: ${fragments[1]}"
    link="$variant"
fi

# --- kernel source --------------------------------------------------------
if [ ! -f "$source_tar" ]; then
    if [ "$source_tar" = "$DEFAULT_SOURCE" ] && [ "$install_source" = 1 ]; then
        [ "$(id -u)" = 0 ] || die "--install-source needs root (apt-get install linux-source-6.1)"
        log "installing linux-source-6.1 with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y linux-source-6.1 >&2
    fi
    [ -f "$source_tar" ] || die "kernel source not found: $source_tar
  install it with:  apt-get install linux-source-6.1
  (or rerun as root with --install-source, or set DUET_KERNEL_SOURCE=<tarball>)"
fi

# The source version: Debian's package version for the packaged tarball,
# otherwise the tarball's content hash.
src_version=""
if [ "$source_tar" = "$DEFAULT_SOURCE" ]; then
    src_version="$(dpkg-query -W -f='linux-source-6.1 ${Version}' linux-source-6.1 2>/dev/null || true)"
fi
if [ -z "$src_version" ]; then
    log "hashing $source_tar"
    src_version="sha256 $(sha256sum "$source_tar" | cut -d' ' -f1)"
fi

# --- parse the fragment ----------------------------------------------------
enable=()
disable=()
for frag in "${fragments[@]}"; do
    lineno=0
    while IFS= read -r line || [ -n "$line" ]; do
        lineno=$((lineno + 1))
        line="${line%%#*}"
        line="$(echo "$line" | tr -d '[:space:]')"
        [ -n "$line" ] || continue
        line="${line#CONFIG_}"
        if [[ "$line" =~ ^[A-Z0-9_]+$ ]]; then
            enable+=("$line")
        elif [[ "$line" =~ ^([A-Z0-9_]+)=n$ ]]; then
            disable+=("${BASH_REMATCH[1]}")
        else
            die "$frag:$lineno: expected NAME or NAME=n, got '$line'"
        fi
    done < "$frag"
done
[ ${#enable[@]} -gt 0 ] || die "$fragment enables no options"

# Without a variant the key is what it always was (cached kernels stay valid).
key="$(printf 'recipe %s\nsource %s\n' "$RECIPE" "$src_version" | cat - "${fragments[@]}" | sha256sum | cut -c1-16)"
out="$cache/$key"

publish() {
    ln -sfn "$key" "$cache/$link"
    log "kernel: $out (linked from $cache/$link)"
    echo "$out"
}

if [ "$rebuild" = 0 ] && [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ] && [ -f "$out/config" ]; then
    log "cached: inputs unchanged (source: $src_version)"
    publish
    exit 0
fi

# --- build tools -------------------------------------------------------------
missing=()
for tool in make:build-essential gcc:build-essential bc:bc bison:bison flex:flex \
            perl:perl xz:xz-utils tar:tar lz4:lz4; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
if command -v gcc >/dev/null 2>&1; then
    echo '#include <gelf.h>' | gcc -E -x c - >/dev/null 2>&1 || missing+=(libelf-dev)
    echo '#include <openssl/opensslv.h>' | gcc -E -x c - >/dev/null 2>&1 || missing+=(libssl-dev)
fi
if [ ${#missing[@]} -gt 0 ]; then
    die "missing build dependencies; install them with:
  apt-get install $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 || die "cannot lock $cache/.lock"

# One unpacked tree per source version, reused across fragments so that a
# changed fragment rebuilds incrementally.
tree_id="$(echo "$src_version" | sha256sum | cut -c1-12)"
tree="$cache/src-$tree_id"
if [ ! -f "$tree/.duet-unpacked" ]; then
    log "unpacking $source_tar into $tree"
    rm -rf "$tree"
    mkdir -p "$tree"
    tar -xJf "$source_tar" -C "$tree" --strip-components=1
    echo "$src_version" > "$tree/.duet-unpacked"
fi

start=$(date +%s)
cd "$tree"
log "configuring: tinyconfig + ${#enable[@]} enabled, ${#disable[@]} disabled options"
make -s tinyconfig >&2
args=()
for o in "${enable[@]}"; do args+=(--enable "$o"); done
for o in "${disable[@]}"; do args+=(--disable "$o"); done
scripts/config "${args[@]}"
make -s olddefconfig >&2

# Every requested option must have survived olddefconfig (a missing
# dependency silently drops it).
bad=()
for o in "${enable[@]}"; do
    grep -qx "CONFIG_$o=y" .config || bad+=("$o (wanted y, got: $(grep -E "^(# )?CONFIG_$o[= ]" .config || echo 'absent'))")
done
for o in "${disable[@]}"; do
    if grep -qE "^CONFIG_$o=" .config; then bad+=("$o (wanted n, got: $(grep -E "^CONFIG_$o=" .config))"); fi
done
if [ ${#bad[@]} -gt 0 ]; then
    die "options from $fragment did not end up as requested (missing dependency or typo?):
$(printf '  %s\n' "${bad[@]}")"
fi

log "building vmlinux and bzImage with -j$jobs in $tree"
nice -n 10 make -j"$jobs" vmlinux bzImage >&2 || die "kernel build failed in $tree (see the output above)"

tmp="$(mktemp -d "$cache/.tmp-$key.XXXXXX")"
chmod 755 "$tmp"
cp vmlinux "$tmp/vmlinux"
cp arch/x86/boot/bzImage "$tmp/bzImage"
cp .config "$tmp/config"
printf 'source: %s\nrecipe: %s\nfragment: %s\nbuilt: %s\n' \
    "$src_version" "$RECIPE" "${fragments[*]}" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$tmp/info"
rm -rf "$out"
mv "$tmp" "$out"
log "built in $(( $(date +%s) - start )) s: vmlinux $(stat -c %s "$out/vmlinux") bytes, bzImage $(stat -c %s "$out/bzImage") bytes"
publish
