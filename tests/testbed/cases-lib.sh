# Sourced by the *-cases.sh scripts that tests/common/testbed.rs runs inside
# the testbed. Each case prints
#   === BEGIN <name>
#   <combined output>
#   === END <name> rc=<exit status>
# and the Rust tests check them.

case_() {
    name=$1
    shift
    echo "=== BEGIN $name"
    "$@" 2>&1
    rc=$?
    echo "=== END $name rc=$rc"
}

# A silent guest fails its case in minutes instead of stalling the whole run
# (and a duet that does not end on SIGTERM is killed 10 s later).
DUET_EXE=$(command -v duet)
duet() { timeout -k 10 180 "$DUET_EXE" "$@"; }

# HTTP/1.0 GET / of $1:$2 (busybox nc).
get() { printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 "$1" "$2"; }
# The last line of $1:$2's answer, once it answers (a guest boots in
# seconds here); after 120 s a line that says it did not.
wait_for() {
    i=0
    while [ $i -lt 120 ]; do
        out=$(get "$1" "$2" 2>/dev/null) && [ -n "$out" ] && { echo "$out" | tail -n 1; return 0; }
        i=$((i + 1)); sleep 1
    done
    echo "no answer from $1:$2"; return 1
}
