#!/bin/bash
# Installs what duet needs on a fresh Debian/Ubuntu machine, builds duet and
# its guest kernel, installs them under /usr/local, and runs the demo.
# Run it as root (no sudo needed; `sudo scripts/install.sh` works too).
#
#   scripts/install.sh               # install + demo
#   scripts/install.sh --no-demo     # install only (CI)
#   scripts/install.sh --files-only  # only copy what is already built (no apt-get,
#                                    # no cargo, no kernel build): packagers, tests
#
# Environment:
#   PREFIX        install prefix (default /usr/local): $PREFIX/bin/duet and
#                 $PREFIX/lib/duet/{duet-init,duet-probe,vmlinux,testbed/}
#   DESTDIR       staging root prepended to every installed path (default none)
#   DUET_BIN_DIR  where the built binaries are (default target/x86_64-unknown-linux-gnu/release)
set -euo pipefail
cd "$(dirname "$0")/.."

demo=1
files_only=0
for a in "$@"; do
    case "$a" in
        --no-demo) demo=0 ;;
        --files-only) files_only=1; demo=0 ;;
        *) echo "install.sh: unknown argument $a" >&2; exit 2 ;;
    esac
done

prefix="${PREFIX:-/usr/local}"
destdir="${DESTDIR:-}"
bin_dir="${DUET_BIN_DIR:-target/x86_64-unknown-linux-gnu/release}"

if [ "$(id -u)" != 0 ] && ! { [ "$files_only" = 1 ] && [ -n "$destdir" ]; }; then
    echo "install.sh: run it as root (e.g. \`su -\` first, or \`sudo scripts/install.sh\`): it installs packages and duet needs root to run containers" >&2
    exit 1
fi

if [ "$files_only" = 0 ]; then
    packages=(
        busybox-static            # the built-in `busybox` image
        runc crun                 # peer runtimes for `duet bench`
        qemu-system-x86           # the nested-KVM testbed, and the VM peer for `duet bench`
        linux-source-6.1          # guest kernel source
        build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils kmod   # kernel build
        lz4                       # the guest kernel is LZ4-compressed
        erofs-utils e2fsprogs     # layer images for VMs
        iproute2 procps util-linux curl ca-certificates
        protobuf-compiler         # protoc, for the CRI test's gRPC bindings (k8s-cri)
        nftables                  # NAT and published ports of duet's bridge network
        wget                      # the network tests fetch from instances with it
        debootstrap               # the PostgreSQL image of `duet bench pristine-db` (images/postgres/build.sh)
    )
    echo "== apt-get install ${packages[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    # shellcheck disable=SC2046
    apt-get install -y -q $(printf '%s\n' "${packages[@]}" | sed 's/#.*//' | tr -s ' \n' ' ') >&2
    # Docker's engine, for duet as Docker's OCI runtime and the `docker exec`
    # bench row: tests and benches start a private dockerd of their own.
    # Without recommends: docker.io recommends cgroupfs-mount, whose init
    # script would mount cgroup hierarchies on a host that has them its way.
    apt-get install -y -q --no-install-recommends docker.io containerd >&2
    # A real registry (distribution 2.8), skopeo to fill it, and htpasswd
    # for its basic auth: `duet pull`'s tests start a private registry of
    # their own (the package's own service is not used).
    apt-get install -y -q --no-install-recommends docker-registry skopeo apache2-utils >&2

    if ! command -v cargo >/dev/null; then
        [ -x "$HOME/.cargo/bin/cargo" ] || {
            echo "== installing Rust with rustup (no cargo found)" >&2
            curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >&2
        }
        export PATH="$HOME/.cargo/bin:$PATH"
    fi

    echo "== cargo build --release" >&2
    cargo build --release --workspace >&2

    echo "== guest kernel" >&2
    images/kernel/build.sh >&2
fi

bin="$destdir$prefix/bin"
lib="$destdir$prefix/lib/duet"
for f in duet duet-init duet-probe; do
    [ -f "$bin_dir/$f" ] || { echo "install.sh: $bin_dir/$f is not built (cargo build --release --workspace)" >&2; exit 1; }
done
install -D -m 0755 "$bin_dir/duet" "$bin/duet"
# duet as an OCI runtime (runc's command line) for dockerd and containerd.
ln -sf duet "$bin/duet-runc"
# The same runtime with --isolation vm, for containerd's BinaryName (which takes no arguments).
ln -sf duet "$bin/duet-runc-vm"
install -D -m 0755 "$bin_dir/duet-init" "$lib/duet-init"
install -D -m 0755 "$bin_dir/duet-probe" "$lib/duet-probe"
kernel="${XDG_CACHE_HOME:-$HOME/.cache}/duet/kernel/current/vmlinux"
if [ -f "$kernel" ]; then
    install -D -m 0644 "$kernel" "$lib/vmlinux"
elif [ "$files_only" = 0 ]; then
    echo "install.sh: no guest kernel at $kernel after images/kernel/build.sh" >&2
    exit 1
else
    echo "install.sh: warning: no guest kernel at $kernel (images/kernel/build.sh); VMs will not find one" >&2
fi
# The nested-KVM testbed (duet runs VM rows and the demo's VM half there when
# this host's KVM cannot boot Linux): its scripts, found by duet as
# $PREFIX/lib/duet/testbed/run. `installed` tells `run` to take duet,
# duet-init and the kernel from this install instead of a checkout's target/.
rm -rf "$lib/testbed"
install -d "$lib/testbed"
for f in tests/testbed/*; do
    case "$f" in
        */run | *.sh) install -m 0755 "$f" "$lib/testbed/" ;;
        *) install -m 0644 "$f" "$lib/testbed/" ;;
    esac
done
echo "installed by scripts/install.sh: duet, duet-init and the guest kernel come from $prefix" > "$lib/testbed/installed"
echo "== installed $bin/duet and $lib/{duet-init,duet-probe,vmlinux,testbed/}" >&2

if [ "$demo" = 1 ]; then
    cd /
    exec "$bin/duet" demo
fi
