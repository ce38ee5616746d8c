#!/bin/sh
# duet's VMM against QEMU microvm and Firecracker inside the nested-KVM
# testbed: boot to workload, wall time, and VMM memory overhead, on the same
# guest kernel, the same initramfs and the same kernel command line (issues
# 3 and 13). Results and method: bench/vmm/RESULTS.md.
#
# On the host (builds bench/vmm/vmmtime.c, then starts the testbed with
# QEMU and Firecracker packed and runs this script inside):
#   tests/testbed/bench-vmm.sh [-n RUNS] [-m MEM_RUNS] [-t TIMEOUT] [-f FIRECRACKER] [-d] [-v]
# Defaults: 10 timed runs per VMM after 1 warm-up each, 3 memory runs each,
# 60 s per run. duet and duet-init are the release builds
# (target/x86_64-unknown-linux-gnu/release/; override with DUET_BIN /
# DUET_INIT as for tests/testbed/run). -f names a Firecracker binary
# (packed into the testbed with its libraries, if any); without it,
# `firecracker` on PATH; without either, the Firecracker column says so and
# stays empty.
# Firecracker boots with --no-api and a config file (boot-source: the
# kernel, the initramfs and the command line; machine-config: 1 vCPU,
# 128 MiB; no devices); its guest's i8042 reset ends it.
# -d (diagnose): after the timed runs, one boot per VMM with `dmesg` as the
# workload and initcall_debug on the command line; prints the kernel's
# milestones and its slowest initcalls side by side (the boot log is kept
# in the guest's log buffer; the console stays quiet, so printing costs
# nothing extra).
#
# What is measured, identically for each VMM (guest: 1 vCPU, 128 MiB):
# - guest_ready_s: guest uptime when the workload starts. The workload is
#   `cat /proc/uptime /proc/cmdline`, started by duet-init from duet's
#   initramfs in both VMMs (duet-init writes duet's ready port just before
#   exec; on QEMU and Firecracker that port write is ignored). /proc/uptime counts from the
#   guest kernel's clock start, so VMM set-up before the first guest
#   instruction is not in it; the next two figures include it.
# - to_ready_ms: host time from exec of the VMM process to the moment the
#   uptime line appears on the VMM's stdout (vmmtime, one clock for both).
# - wall_ms: host time from exec of the VMM process to its exit (the guest's
#   i8042 reset after the workload; QEMU runs with -no-reboot, Firecracker
#   exits on it).
# - duet only: RunReport ready - vcpus_started (host clock: first vCPU
#   thread started -> guest's ready port write) and its vm_exits counters.
# Memory (separate runs, workload `cat /proc/uptime; sleep 3`, so no
# sampling disturbs the timed runs): 500 ms after the uptime line, vmmtime
# reads /proc/<vmm pid>/smaps once: overhead = sum of Rss - Rss of the guest
# RAM mapping (the mapping whose Size is exactly 128 MiB), for every VMM
# (duet's is its jailed VMM process, a child of `duet run`, whose own RSS
# is reported beside it; the peers run without a jailer);
# plus max RSS (wait4 ru_maxrss) and duet's own vmm_overhead_kib counter
# (vmm/src/memory_usage.rs, measured at the end of the run).
set -eu

runs=10
mem_runs=3
timeout_s=60
verbose=0
diagnose=0
firecracker=""
usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        -m) mem_runs="$2"; shift 2 ;;
        -t) timeout_s="$2"; shift 2 ;;
        -v) verbose=1; shift ;;
        -d) diagnose=1; shift ;;
        -f) firecracker="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench-vmm: unexpected argument '$1'" >&2; usage >&2; exit 2 ;;
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
        [ -x "$f" ] || { echo "bench-vmm: $f missing: cargo build --release --workspace" >&2; exit 2; }
    done
    export DUET_BIN DUET_INIT
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    gcc -static -O2 -Wall -o "$tmp/vmmtime" "$repo/bench/vmm/vmmtime.c"
    [ -n "$firecracker" ] || firecracker="$(command -v firecracker || true)"
    if [ -n "$firecracker" ]; then
        [ -f "$firecracker" ] && [ -x "$firecracker" ] || { echo "bench-vmm: -f $firecracker: not an executable file" >&2; exit 2; }
        # Packed at the same path inside, with its libraries if it has any.
        firecracker="$(readlink -f "$firecracker")"
    else
        echo "bench-vmm: no Firecracker (-f PATH, or firecracker on PATH): its rows stay empty" >&2
    fi
    # ~6 runs of a few seconds each per iteration, plus warm-ups, memory and diagnose runs.
    total=$(( (runs + mem_runs + 4) * 3 * 8 + 120 ))
    set -- -n "$runs" -m "$mem_runs" -t "$timeout_s"
    [ "$verbose" = 1 ] && set -- "$@" -v
    [ "$diagnose" = 1 ] && set -- "$@" -d
    [ -n "$firecracker" ] && set -- "$@" -f "$firecracker"
    "$repo/tests/testbed/run" --qemu --timeout "$total" \
        --file "$0:/testbed/files/bench-vmm.sh" --file "$tmp/vmmtime" \
        ${firecracker:+--with-libs "$firecracker"} \
        -- bench-vmm.sh "$@"
    exit $?
fi

# ---------------------------------------------------------- inside the testbed
die() { echo "bench-vmm: $*" >&2; exit 1; }
kernel="${DUET_KERNEL:-}"
[ -f "$kernel" ] || die "no guest kernel (DUET_KERNEL)"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (tests/testbed/run --qemu)"
command -v vmmtime >/dev/null || die "vmmtime missing (run this script on the host)"
command -v duet >/dev/null || die "duet missing"
mem_mib=128
# Every VMM boots the same initramfs, root included: duet's layer disks
# (its default root) would give duet a different guest to boot.
export DUET_VM_ROOTFS=initramfs
work=/tmp/bench-vmm
rm -rf "$work"
mkdir -p "$work"
duet_root="${DUET_ROOT:-/tmp/duet}"

# Runs duet with --keep and copies the instance's initramfs (image part +
# this workload's workload.json) to $1. Prints the workload's output.
keep_initrd() {
    dest="$1"; shift
    duet run --isolation vm --memory "$mem_mib" --keep busybox -- "$@" >"$work/keep.out" 2>&1 ||
        { cat "$work/keep.out"; die "duet run --keep failed"; }
    id=$(sed -n 's/^duet: kept instance //p' "$work/keep.out" | tr -d '\r')
    [ -f "$duet_root/instances/$id/initrd.cpio" ] || { cat "$work/keep.out"; die "no initrd.cpio in kept instance '$id'"; }
    cp "$duet_root/instances/$id/initrd.cpio" "$dest"
    cat "$work/keep.out"
}

echo "bench-vmm: guest kernel $kernel ($(wc -c <"$kernel") bytes), $(qemu-system-x86_64 --version | head -n 1)"
echo "bench-vmm: duet $(wc -c <"$(command -v duet)") bytes, outer $(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPU"

# Warm-up of duet (builds and caches the image part) and the initramfs for QEMU.
keep_initrd "$work/initrd-time.cpio" cat /proc/uptime /proc/cmdline >"$work/warm.out"
cmdline=$(grep -a 'rdinit=' "$work/warm.out" | tail -n 1 | tr -d '\r')
[ -n "$cmdline" ] || { cat "$work/warm.out"; die "no kernel command line in the warm-up output"; }
keep_initrd "$work/initrd-mem.cpio" sh -c 'cat /proc/uptime; sleep 3' >/dev/null
[ "$diagnose" = 1 ] && keep_initrd "$work/initrd-dmesg.cpio" dmesg >/dev/null
echo "bench-vmm: kernel command line (duet's, used for both): $cmdline"
echo "bench-vmm: initramfs $(wc -c <"$work/initrd-time.cpio") bytes (uncompressed cpio, from duet run --keep)"

qemu_cmd() {
    echo qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m "$mem_mib" -smp 1 \
        -nodefaults -no-user-config -nographic -no-reboot -serial stdio -device i8042 \
        -kernel "$kernel" -initrd "$1"
}

# Field NAME=value from a vmmtime result line.
field() { echo "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
# The guest uptime printed by the workload.
uptime_of() { grep -a -m 1 -E '^[0-9]+\.[0-9]+ [0-9]+\.[0-9]+' "$1" | tr -d '\r' | cut -d ' ' -f 1; }
# duet's RunReport: at_ns of phase $2, or counter $2, from the JSON in file $1.
phase_ns() { awk -v p="\"$2\"" '$1 == "\"phase\":" { cur = $2; sub(/,$/, "", cur) } $1 == "\"at_ns\":" && cur == p { v = $2; sub(/,$/, "", v); print v; exit }' "$1"; }
counter() { awk -v k="\"$2\":" '$1 == k { v = $2; sub(/,$/, "", v); print v; exit }' "$1"; }

run_duet() { # $1 = output file; the rest: vmmtime options
    out="$1"; shift
    vmmtime -t "$timeout_s" "$@" @uptime "$out" -- \
        duet run --isolation vm --memory "$mem_mib" --report json busybox -- cat /proc/uptime /proc/cmdline
}
run_duet_mem() { # $1 = output file
    vmmtime -t "$timeout_s" -m "$guest_kib" $vflag @uptime "$1" -- \
        duet run --isolation vm --memory "$mem_mib" --report json busybox -- sh -c 'cat /proc/uptime; sleep 3'
}
run_qemu() { # $1 = output file, $2 = initrd; the rest: vmmtime options
    out="$1"; initrd="$2"; shift 2
    # shellcheck disable=SC2046 # word splitting of the command is intended
    vmmtime -t "$timeout_s" "$@" @uptime "$out" -- $(qemu_cmd "$initrd") -append "$cmdline"
}
# Firecracker's config for initramfs $1 and command line $2 (JSON strings:
# the paths and duet's command line hold no quote or backslash).
fc_config() {
    cat <<EOF
{
  "boot-source": { "kernel_image_path": "$kernel", "initrd_path": "$1", "boot_args": "$2" },
  "drives": [],
  "machine-config": { "vcpu_count": 1, "mem_size_mib": $mem_mib }
}
EOF
}
fc="${firecracker:-$(command -v firecracker || true)}"
if [ -n "$fc" ]; then
    fc_config "$work/initrd-time.cpio" "$cmdline" >"$work/fc-time.json"
    fc_config "$work/initrd-mem.cpio" "$cmdline" >"$work/fc-mem.json"
    echo "bench-vmm: $("$fc" --version 2>&1 | head -n 1)"
else
    echo "bench-vmm: no Firecracker in the testbed (bench-vmm.sh -f PATH on the host): its rows stay empty"
fi
run_fc() { # $1 = output file, $2 = config; the rest: vmmtime options
    out="$1"; cfg="$2"; shift 2
    vmmtime -t "$timeout_s" "$@" @uptime "$out" -- "$fc" --no-api --config-file "$cfg"
}
guest_kib=$((mem_mib * 1024))
vflag=""
[ "$verbose" = 1 ] && vflag="-v"

# QEMU warm-up (page cache, first-exec costs).
r=$(run_qemu "$work/qemu.warm" "$work/initrd-time.cpio")
[ -n "$(uptime_of "$work/qemu.warm")" ] || { tr -d '\r' <"$work/qemu.warm" | tail -n 30; die "QEMU warm-up did not reach the workload ($r)"; }
[ "$verbose" = 1 ] && { echo "--- QEMU warm-up console:"; tr -d '\r' <"$work/qemu.warm"; }
if [ -n "$fc" ]; then
    r=$(run_fc "$work/fc.warm" "$work/fc-time.json")
    [ -n "$(uptime_of "$work/fc.warm")" ] || { tr -d '\r' <"$work/fc.warm" | tail -n 30; die "Firecracker warm-up did not reach the workload ($r)"; }
    [ "$verbose" = 1 ] && { echo "--- Firecracker warm-up console:"; tr -d '\r' <"$work/fc.warm"; }
fi

# A peer's timed run: $1 = name in the log, $2 = file prefix (run $i's
# output is $work/$2.$i), $3 = vmmtime's result line; appends to $work/$2.tsv.
peer_timed() {
    up=$(uptime_of "$work/$2.$i")
    if [ -n "$up" ]; then
        printf '%s\t%s\t%s\n' "$up" "$(field marker_ms "$3")" "$(field wall_ms "$3")" >>"$work/$2.tsv"
        echo "bench-vmm: $1 run $i: guest_ready ${up} s, to_ready $(field marker_ms "$3") ms, wall $(field wall_ms "$3") ms"
    else
        echo "bench-vmm: $1 run $i FAILED ($3):"; tr -d '\r' <"$work/$2.$i" | tail -n 30; failed=1
    fi
}
# A peer's memory run, the same way ($work/$2-mem.$i, $work/$2-mem.tsv).
peer_memory() {
    g=$(field guest_kib "$3"); t=$(field rss_kib "$3")
    if [ -n "$g" ] && [ "$g" -gt 0 ]; then
        printf '%s\t%s\t%s\t%s\n' "$((t - g))" "$t" "$g" "$(field maxrss_kib "$3")" >>"$work/$2-mem.tsv"
        echo "bench-vmm: $1 memory run $i: sampled rss ${t} KiB, guest ${g} KiB, overhead $((t - g)) KiB, max rss $(field maxrss_kib "$3") KiB"
    else
        echo "bench-vmm: $1 memory run $i FAILED ($3):"; tr -d '\r' <"$work/$2-mem.$i" | tail -n 30; failed=1
    fi
}

: >"$work/duet.tsv"
: >"$work/qemu.tsv"
: >"$work/fc.tsv"
failed=0
i=1
while [ "$i" -le "$runs" ]; do
    # Alternate the VMMs so drift in the testbed hits both alike.
    r=$(run_duet "$work/duet.$i")
    up=$(uptime_of "$work/duet.$i")
    vs=$(phase_ns "$work/duet.$i" vcpus_started)
    rd=$(phase_ns "$work/duet.$i" ready)
    if [ -n "$up" ] && [ -n "$vs" ] && [ -n "$rd" ]; then
        rv=$(( (rd - vs) / 1000000 ))
        ex=$(counter "$work/duet.$i" vm_exits.total)
        printf '%s\t%s\t%s\t%s\t%s\n' "$up" "$(field marker_ms "$r")" "$(field wall_ms "$r")" "$rv" "$ex" >>"$work/duet.tsv"
        echo "bench-vmm: duet run $i: guest_ready ${up} s, to_ready $(field marker_ms "$r") ms, wall $(field wall_ms "$r") ms, ready-vcpus_started ${rv} ms, exits ${ex}"
    else
        echo "bench-vmm: duet run $i FAILED ($r):"; tr -d '\r' <"$work/duet.$i" | tail -n 30; failed=1
    fi
    peer_timed qemu qemu "$(run_qemu "$work/qemu.$i" "$work/initrd-time.cpio")"
    [ -z "$fc" ] || peer_timed firecracker fc "$(run_fc "$work/fc.$i" "$work/fc-time.json")"
    i=$((i + 1))
done

# Memory runs.
: >"$work/duet-mem.tsv"
: >"$work/qemu-mem.tsv"
: >"$work/fc-mem.tsv"
i=1
while [ "$i" -le "$mem_runs" ]; do
    r=$(run_duet_mem "$work/duet-mem.$i")
    g=$(field guest_kib "$r"); t=$(field rss_kib "$r")
    ov=$(counter "$work/duet-mem.$i" vmm_overhead_kib)
    if [ -n "$g" ] && [ "$g" -gt 0 ] && [ -n "$ov" ]; then
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$((t - g))" "$t" "$g" "$(field maxrss_kib "$r")" "$ov" \
            "$(counter "$work/duet-mem.$i" vmm_rss_kib)" "$(counter "$work/duet-mem.$i" guest_touched_kib)" \
            "$(field others_rss_kib "$r")" >>"$work/duet-mem.tsv"
        echo "bench-vmm: duet memory run $i: sampled rss ${t} KiB, guest ${g} KiB, overhead $((t - g)) KiB (jailed VMM child: $(field vmm_is_child "$r")), max rss $(field maxrss_kib "$r") KiB; duet run beside it: $(field others_rss_kib "$r") KiB in $(field others "$r") process(es); end-of-run counters: vmm_rss $(counter "$work/duet-mem.$i" vmm_rss_kib) KiB, guest_touched $(counter "$work/duet-mem.$i" guest_touched_kib) KiB, vmm_overhead ${ov} KiB"
    else
        echo "bench-vmm: duet memory run $i FAILED ($r):"; tr -d '\r' <"$work/duet-mem.$i" | tail -n 30; failed=1
    fi
    peer_memory qemu qemu "$(run_qemu "$work/qemu-mem.$i" "$work/initrd-mem.cpio" -m "$guest_kib" $vflag)"
    [ -z "$fc" ] || peer_memory firecracker fc "$(run_fc "$work/fc-mem.$i" "$work/fc-mem.json" -m "$guest_kib" $vflag)"
    i=$((i + 1))
done

# Diagnose: the guest kernel's own log of one boot per VMM, initcall_debug on.
# From a console capture $1: the kernel log lines ("[ secs] text").
klog() { tr -d '\r' <"$1" | grep -a -E '^\[ *[0-9]+\.[0-9]+\] '; }
# The largest gaps between consecutive log lines: "gap_ms at_s line".
gaps() { klog "$1" | awk '{ t = substr($0, 2, index($0, "]") - 2) + 0; if (NR > 1) printf "%8.1f ms  at %9.6f  %s\n", (t - p) * 1000, t, substr($0, index($0, "]") + 2); p = t }' | sort -rn | head -n 12; }
# The slowest initcalls: "usecs name".
slowest() { klog "$1" | sed -n 's/.*initcall \([^ ]*\) returned .* after \([0-9]*\) usecs.*/\2 \1/p' | sort -rn | head -n 12; }
# Milestones: the time of the first line matching each pattern.
milestones() {
    for m in 'Linux version' 'tsc: ' 'clocksource: Switched' 'Calibrating delay' 'smp: Brought up' 'Freeing unused kernel' 'Run /init'; do
        printf '  %-24s %s\n' "$m" "$(klog "$1" | grep -a -m 1 -F "$m" | sed 's/^\[ *\([0-9.]*\)\].*/\1 s/')"
    done
}
if [ "$diagnose" = 1 ]; then
    # A log buffer large enough that initcall_debug's lines do not push
    # out the early boot.
    dcmd="$cmdline initcall_debug log_buf_len=1M"
    DUET_KERNEL_APPEND="initcall_debug log_buf_len=1M" vmmtime -t "$timeout_s" @uptime "$work/diag.duet" -- \
        duet run --isolation vm --memory "$mem_mib" busybox -- dmesg >/dev/null
    # shellcheck disable=SC2046 # word splitting of the command is intended
    vmmtime -t "$timeout_s" @uptime "$work/diag.qemu" -- $(qemu_cmd "$work/initrd-dmesg.cpio") -append "$dcmd" >/dev/null
    diag="duet qemu"
    if [ -n "$fc" ]; then
        fc_config "$work/initrd-dmesg.cpio" "$dcmd" >"$work/fc-dmesg.json"
        run_fc "$work/diag.fc" "$work/fc-dmesg.json" >/dev/null
        diag="$diag fc"
    fi
    for v in $diag; do
        echo
        echo "bench-vmm: DIAGNOSE $v: $(klog "$work/diag.$v" | wc -l) log lines, last at $(klog "$work/diag.$v" | tail -n 1 | sed 's/^\[ *\([0-9.]*\)\].*/\1/') s"
        milestones "$work/diag.$v"
        echo "  largest gaps between log lines:"
        gaps "$work/diag.$v" | sed 's/^/  /'
        echo "  slowest initcalls (usecs):"
        slowest "$work/diag.$v" | sed 's/^/  /'
    done
    [ "$verbose" = 1 ] && for v in $diag; do echo "--- $v kernel log:"; klog "$work/diag.$v"; done
fi

# Median of column $2 of file $1 (the lower middle for an even count).
median() { cut -f "$2" "$1" | sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { cut -f "$2" "$1" | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR) print lo "-" hi; else print "-" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0 && a != "-") printf "%.2f", a / b; else print "-" }'; }

nd=$(wc -l <"$work/duet.tsv"); nq=$(wc -l <"$work/qemu.tsv"); nf=$(wc -l <"$work/fc.tsv")
# A median with its range, "-" for an empty file.
cell() { [ -s "$1" ] && echo "$(median "$1" "$2") [$(range "$1" "$2")]" || echo "-"; }
echo
echo "bench-vmm: RESULTS (medians; range in brackets; duet n=$nd, QEMU n=$nq, Firecracker n=$nf; memory runs duet n=$(wc -l <"$work/duet-mem.tsv"), QEMU n=$(wc -l <"$work/qemu-mem.tsv"), Firecracker n=$(wc -l <"$work/fc-mem.tsv"))"
[ -n "$fc" ] || echo "bench-vmm: no Firecracker: bench-vmm.sh -f PATH (a static binary) fills its column"
echo "| metric | duet | QEMU microvm | Firecracker | duet/QEMU | duet/Firecracker |"
echo "|---|---|---|---|---|---|"
for spec in "guest uptime at workload start (s)|1" "host: VMM exec -> workload output (ms)|2" "host: VMM exec -> exit (ms)|3"; do
    name=${spec%%|*}; c=${spec#*|}
    md=$(median "$work/duet.tsv" "$c"); mq=$(median "$work/qemu.tsv" "$c"); mf=$(median "$work/fc.tsv" "$c")
    echo "| $name | $(cell "$work/duet.tsv" "$c") | $(cell "$work/qemu.tsv" "$c") | $(cell "$work/fc.tsv" "$c") | $(ratio "$md" "$mq") | $(ratio "$md" "$mf") |"
done
echo "| duet RunReport ready - vcpus_started (ms) | $(cell "$work/duet.tsv" 4) | - | - | - | - |"
echo "| duet vm_exits.total | $(median "$work/duet.tsv" 5) | - | - | - | - |"
md=$(median "$work/duet-mem.tsv" 1)
echo "| VMM overhead: RSS - guest RAM Rss, sampled in the run (KiB) | $(cell "$work/duet-mem.tsv" 1) | $(cell "$work/qemu-mem.tsv" 1) | $(cell "$work/fc-mem.tsv" 1) | $(ratio "$md" "$(median "$work/qemu-mem.tsv" 1)") | $(ratio "$md" "$(median "$work/fc-mem.tsv" 1)") |"
for spec in "RSS at that sample (KiB)|2" "guest RAM Rss at that sample (KiB)|3" "max RSS, wait4 ru_maxrss (KiB)|4"; do
    name=${spec%%|*}; c=${spec#*|}
    echo "| $name | $(median "$work/duet-mem.tsv" "$c") | $(median "$work/qemu-mem.tsv" "$c") | $(median "$work/fc-mem.tsv" "$c") | - | - |"
done
echo "| duet: RSS of the rest of its process tree (\`duet run\` beside the jailed VMM) (KiB) | $(cell "$work/duet-mem.tsv" 8) | - | - | - | - |"
echo "| duet counter vmm_overhead_kib, end of run (KiB) | $(cell "$work/duet-mem.tsv" 5) | - | - | - | - |"
echo "| duet counters vmm_rss_kib / guest_touched_kib (KiB) | $(median "$work/duet-mem.tsv" 6) / $(median "$work/duet-mem.tsv" 7) | - | - | - | - |"
echo
echo "bench-vmm: last duet report:"
run_last=$(ls "$work"/duet.* 2>/dev/null | grep -E 'duet\.[0-9]+$' | sort -t . -k 2 -n | tail -n 1)
[ -n "$run_last" ] && sed -n '/^{/,/^}/p' "$run_last"
exit "$failed"
