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
