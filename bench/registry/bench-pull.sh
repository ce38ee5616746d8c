#!/bin/bash
# Pull time from a local registry: `duet pull` (download, verify, unpack
# into the store) against `skopeo copy` of the same image to a local
# directory (download and verify only, the issue's peer) and against
# containerd's `ctr image pull` (download, verify, unpack into its
# overlayfs snapshotter: the same work as duet's), interleaved, in one run.
#
#   bench/registry/bench-pull.sh [--runs N] [--debian] [--duet PATH] [--dir DIR]
#
# The image: /usr/share/doc and /usr/lib/python3.11 of this host as two
# gzip layers, or with --debian a Debian bookworm minbase rootfs made by
# debootstrap (cached in ~/.cache/duet/bench/debian-minbase/) as one layer.
# The state root and skopeo's directory are made in DIR (default /var/tmp;
# /dev/shm takes the disk out of it); `sync` runs before each timed command
# so one run's writeback does not land on the next.
# containerd runs privately (its own root, state and socket in DIR), started
# afresh with an empty root before each of its runs, outside the timing.
# Needs docker-registry, skopeo, containerd, python3 (scripts/install.sh
# installs them); root for containerd.
set -euo pipefail
runs=5
debian=0
dir=/var/tmp
duet="${DUET:-$(command -v duet || echo target/x86_64-unknown-linux-gnu/release/duet)}"
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift ;;
        --debian) debian=1 ;;
        --duet) duet="$2"; shift ;;
        --dir) dir="$2"; shift ;;
        *) echo "usage: $0 [--runs N] [--debian] [--duet PATH] [--dir DIR]" >&2; exit 2 ;;
    esac
    shift
done
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d /var/tmp/duet-bench-pull.XXXXXX)"
out="$(mktemp -d "$dir/duet-bench-pull-out.XXXXXX")"
reg_pid=
ctd_pid=
stop_containerd() {
    if [ -n "$ctd_pid" ]; then kill "$ctd_pid" 2>/dev/null; wait "$ctd_pid" 2>/dev/null || true; ctd_pid=; fi
    # What its snapshotter mounted, if a pull was cut off.
    { grep -o " $out/ctd/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount "$m" 2>/dev/null || true; done
}
cleanup() { stop_containerd; [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work" "$out"; }
trap cleanup EXIT

if [ "$debian" = 1 ]; then
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/duet/bench/debian-minbase"
    if [ ! -x "$cache/bin/sh" ]; then
        echo "== debootstrap --variant=minbase bookworm (cached in $cache)" >&2
        rm -rf "$cache.tmp"; mkdir -p "$(dirname "$cache")"
        debootstrap --variant=minbase bookworm "$cache.tmp" http://deb.debian.org/debian >&2
        mv "$cache.tmp" "$cache"
    fi
    dirs=("$cache=/")  # the rootfs at the layer's root, as an image has it
else
    dirs=(/usr/share/doc /usr/lib/python3.11)
fi
echo "== building the image (${dirs[*]})" >&2
bytes=$(python3 "$here/oci-layout.py" "$work/layout" bench "${dirs[@]}")

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
    "$work/registry" "$port" > "$work/registry.yml"
docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
reg_pid=$!
until python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null; do sleep 0.1; done
ref="127.0.0.1:$port/bench/image:1"
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:bench" "docker://$ref"
echo "== image: $((bytes / 1000000)) MB compressed; $runs runs each, interleaved" >&2

# Milliseconds by the shell's own clock (no process started to read it).
ms() { echo $(( $(date +%s%N) / 1000000 )); }
start_containerd() {
    rm -rf "$out/ctd"; mkdir -p "$out/ctd"
    printf 'version = 2\nroot = "%s"\nstate = "%s"\n[grpc]\n  address = "%s"\n' \
        "$out/ctd/root" "$out/ctd/state" "$out/ctd/sock" > "$out/ctd/config.toml"
    printf 'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]\n' \
        >> "$out/ctd/config.toml"
    containerd --config "$out/ctd/config.toml" > "$out/ctd/log" 2>&1 &
    ctd_pid=$!
    until ctr --address "$out/ctd/sock" version >/dev/null 2>&1; do
        kill -0 "$ctd_pid" 2>/dev/null || { cat "$out/ctd/log" >&2; exit 1; }
        sleep 0.1
    done
}
duet_t=(); skopeo_t=(); ctd_t=()
for i in $(seq "$runs"); do
    rm -rf "$out/root" "$out/dir"; mkdir -p "$out/root"; sync
    t=$(ms); DUET_ROOT="$out/root" "$duet" pull --quiet --insecure "$ref" >/dev/null; duet_t+=($(( $(ms) - t )))
    sync
    t=$(ms); skopeo copy --quiet --src-tls-verify=false "docker://$ref" "dir:$out/dir"; skopeo_t+=($(( $(ms) - t )))
    start_containerd; sync
    t=$(ms); ctr --address "$out/ctd/sock" image pull --plain-http "$ref" >/dev/null; ctd_t+=($(( $(ms) - t )))
    stop_containerd
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
d=$(median "${duet_t[@]}"); s=$(median "${skopeo_t[@]}"); c=$(median "${ctd_t[@]}")
echo "| what | median ms | runs |"
echo "|---|---|---|"
echo "| duet pull (download, verify, unpack into the store; in $dir) | $d | ${duet_t[*]} |"
echo "| skopeo copy to dir: (download, verify) | $s | ${skopeo_t[*]} |"
echo "| containerd: ctr image pull (download, verify, unpack) | $c | ${ctd_t[*]} |"
python3 -c "print(f'| ratio duet / skopeo | {$d/$s:.2f}x | |'); print(f'| ratio duet / containerd | {$d/$c:.2f}x | |')"
