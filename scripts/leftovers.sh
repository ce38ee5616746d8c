#!/bin/bash
# What is on this host that a run of duet or of its tests could leave
# behind: cgroups named duet*, mount points, network links, and processes
# of the programs the tests start (duet's monitors, QEMU, virtiofsd, the
# engines, the registry, PostgreSQL). One line per thing, sorted.
#
# scripts/test.sh takes this before and after the tests and fails when
# the tests left something that was not there before:
#   scripts/leftovers.sh > before; ...; scripts/leftovers.sh --new-since before
set -euo pipefail

list() {
    # Each source on its own: none of them failing (no match, a cgroup gone
    # during find, no `ip`) may stop the others or the script.
    { find /sys/fs/cgroup -maxdepth 8 -type d -name 'duet*' 2>/dev/null || true; } | sed 's/^/cgroup /'
    awk '{ print "mount " $2 }' /proc/mounts
    { ip -o link 2>/dev/null || true; } | awk -F': ' '{ sub(/@.*/, "", $2); print "link " $2 }'
    { pgrep -l -f 'duet|qemu-system|virtiofsd|dockerd|containerd|docker-registry|postgres|skopeo|firecracker' || true; } \
        | awk '{ print "process " $2 }'
}

if [ "${1:-}" = "--new-since" ]; then
    before="$2"
    # Processes take a moment to be reaped after their test: look twice.
    for try in 1 2 3; do
        new="$(comm -13 <(sort "$before") <(list | { grep -v '^process \(pgrep\|leftovers\)' || true; } | sort))"
        [ -z "$new" ] && exit 0
        sleep 5
    done
    echo "$new"
    exit 1
fi
list | { grep -v '^process \(pgrep\|leftovers\)' || true; } | sort
