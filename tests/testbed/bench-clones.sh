#!/bin/sh
# Memory of K idle microVM clones of one warm-start template, next to K
# cold-booted microVMs and K containers, inside the nested-KVM testbed
# (issue 13, "Measure"). Results and method: bench/vmm/RESULTS.md.
#
# On the host (starts the testbed with enough memory and runs this script inside):
#   tests/testbed/bench-clones.sh [-k "10 50 100"] [-M OUTER_MIB] [--kinds "clone vm container"]
# Defaults: K = 10 50 100, an 8 GiB outer machine. duet and duet-init are
# the release builds (target/x86_64-unknown-linux-gnu/release/; override
# with DUET_BIN / DUET_INIT as for tests/testbed/run).
#
# Every instance is `duet run -d ... busybox -- sh -c 'echo duet-ready; exec
# sleep 1000000'` with --network none and the default 128 MiB guest:
# - clone: `--warm` (the template is built once before any baseline);
# - vm: `--isolation vm`, a cold boot each;
# - container: `--isolation container`.
# For each kind and K: the instances start one after another (`run -d`
# returns once the workload runs); after 3 s of rest, the MemAvailable drop
# from the baseline taken right before them, and the sum of Pss over every
# process (/proc/*/smaps_rollup) minus the baseline's, both divided by K.
# Pss splits a shared page between its users, so the clones' common
# template pages count once in the sum. Then `duet rm -f` of all of them.
# Output: one `kind=... k=... ...` line per point, then `done`.
set -eu

ks="10 50 100"
kinds="clone vm container"
outer_mib=8192
usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        -k) ks="$2"; shift 2 ;;
        -M) outer_mib="$2"; shift 2 ;;
        --kinds) kinds="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench-clones: unexpected argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

# ---------------------------------------------------------------- host side
if [ "${DUET_TESTBED:-}" != 1 ]; then
    here="$(cd "$(dirname "$0")" && pwd)"
    repo="$(cd "$here/../.." && pwd)"
    release="$repo/target/x86_64-unknown-linux-gnu/release"
    DUET_BIN="${DUET_BIN:-$release/duet}"
    DUET_INIT="${DUET_INIT:-$release/duet-init}"
    for f in "$DUET_BIN" "$DUET_INIT"; do
        [ -x "$f" ] || { echo "bench-clones: $f missing: cargo build --release --workspace" >&2; exit 2; }
    done
    export DUET_BIN DUET_INIT
    # About 3 s per cold boot, 1 s per clone, and the teardowns.
    total=0
    for k in $ks; do total=$((total + k * 8)); done
    total=$((total + 300))
    exec "$repo/tests/testbed/run" --memory "$outer_mib" --timeout "$total" \
        --file "$0:/testbed/files/bench-clones.sh" \
        -- sh /testbed/files/bench-clones.sh -k "$ks" --kinds "$kinds"
fi

# ---------------------------------------------------------- inside the testbed
die() { echo "bench-clones: $*" >&2; exit 1; }
command -v duet >/dev/null || die "duet missing"
avail_kib() { sed -n 's/^MemAvailable: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
pss_kib() {
    total=0
    for f in /proc/[0-9]*/smaps_rollup; do
        v=$(sed -n 's/^Pss: *\([0-9]*\) kB/\1/p' "$f" 2>/dev/null || true)
        [ -n "$v" ] && total=$((total + v))
    done
    echo "$total"
}
args_of() {
    case "$1" in
        clone) echo "--warm" ;;
        vm) echo "--isolation vm --network none" ;;
        container) echo "--isolation container --network none" ;;
        *) die "unknown kind $1" ;;
    esac
}
if echo " $kinds " | grep -q " clone "; then
    duet run --warm busybox -- true || die "building the warm-start template failed"
fi
echo "outer_mib=$(($(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1024)) kernel=$(uname -r)"
for kind in $kinds; do
    for k in $ks; do
        sync
        echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
        sleep 2
        a0=$(avail_kib); p0=$(pss_kib)
        t0=$(cut -d' ' -f1 /proc/uptime)
        ids=""
        i=0
        while [ $i -lt "$k" ]; do
            # shellcheck disable=SC2046
            id=$(duet run -d $(args_of "$kind") busybox -- sh -c 'echo duet-ready; exec sleep 1000000') ||
                { echo "kind=$kind k=$k failed after $i instances"; break; }
            ids="$ids $id"
            i=$((i + 1))
        done
        t1=$(cut -d' ' -f1 /proc/uptime)
        sleep 3
        a1=$(avail_kib); p1=$(pss_kib)
        n=$i
        [ "$n" -gt 0 ] || n=1
        echo "kind=$kind k=$i start_s=$(echo "$t0 $t1" | awk '{printf "%.1f", $2 - $1}') \
avail_drop_kib_per=$(( (a0 - a1) / n )) pss_kib_per=$(( (p1 - p0) / n ))"
        # shellcheck disable=SC2086
        [ -n "$ids" ] && duet rm -f $ids >/dev/null
    done
done
echo done
