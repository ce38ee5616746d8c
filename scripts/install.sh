#!/bin/bash
# Installs what duet needs on a fresh Debian/Ubuntu machine, builds duet and
# its guest kernel, installs them under /usr/local, and runs the demo.
#
#   sudo scripts/install.sh            # install + demo
#   sudo scripts/install.sh --no-demo  # install only (CI)
set -euo pipefail
cd "$(dirname "$0")/.."

demo=1
for a in "$@"; do
    case "$a" in
        --no-demo) demo=0 ;;
        *) echo "install.sh: unknown argument $a" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (sudo): it installs packages and duet needs root to run containers" >&2; exit 1; }

packages=(
    busybox-static            # the built-in `busybox` image
    runc                      # peer runtime for `duet bench`
    qemu-system-x86           # the nested-KVM testbed, and the VM peer for `duet bench`
    linux-source-6.1          # guest kernel source
    build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils kmod   # kernel build
    lz4                       # the guest kernel is LZ4-compressed
    erofs-utils e2fsprogs     # layer images for VMs
    iproute2 procps curl ca-certificates
)
echo "== apt-get install ${packages[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
# shellcheck disable=SC2046
apt-get install -y -q $(printf '%s\n' "${packages[@]}" | sed 's/#.*//' | tr -s ' \n' ' ') >&2

if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] || {
        echo "== installing Rust with rustup (no cargo found)" >&2
        curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >&2
    }
    export PATH="$HOME/.cargo/bin:$PATH"
fi

echo "== cargo build --release" >&2
cargo build --release --workspace >&2
bin=target/x86_64-unknown-linux-gnu/release

echo "== guest kernel" >&2
images/kernel/build.sh >&2

install -D -m 0755 "$bin/duet" /usr/local/bin/duet
install -D -m 0755 "$bin/duet-init" /usr/local/lib/duet/duet-init
install -D -m 0755 "$bin/duet-probe" /usr/local/lib/duet/duet-probe
kernel="${XDG_CACHE_HOME:-$HOME/.cache}/duet/kernel/current/vmlinux"
install -D -m 0644 "$kernel" /usr/local/lib/duet/vmlinux
echo "== installed /usr/local/bin/duet and /usr/local/lib/duet/{duet-init,duet-probe,vmlinux}" >&2

if [ "$demo" = 1 ]; then
    exec /usr/local/bin/duet demo
fi
