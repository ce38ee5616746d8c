#!/bin/bash
# Builds the PostgreSQL image of the pristine-db scenario (`duet bench
# pristine-db`) into duet's image store ($DUET_ROOT, default /var/lib/duet):
#
#   duet-postgres-base:15  Debian bookworm minbase + postgresql-15, one layer
#                          (debootstrap --variant=minbase, trimmed: no apt
#                          lists or caches, docs, man pages, translations,
#                          perl (postgresql-common's wrappers only) or the
#                          LLVM JIT, which the image turns off; ~160 MiB)
#   duet-postgres:15       + a second layer made by `duet run --keep` and
#                          `duet commit`: initdb, the settings below, and
#                          seed.sql loaded, then a clean shutdown, so every
#                          instance starts from the same bytes without
#                          crash recovery
#
# Usage: images/postgres/build.sh [--duet PATH] [--force]
#
# The debootstrapped tree and the base tarball are cached outside the repo in
# ~/.cache/duet/postgres/<key>/ (the key hashes the suite, the package list
# and this script); images already in the store are kept unless their stamp
# (/var/lib/postgresql/duet-postgres.stamp, the hash of this script and seed.sql) differs,
# or --force. Needs root, debootstrap and Debian's package mirror.
#
# The image is for tests: it trusts every connection (pg_hba `trust`), as
# its instances are reachable only on duet's bridge or a published port.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
duet=
force=0
while [ $# -gt 0 ]; do
    case "$1" in
        --duet) duet="$2"; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "images/postgres/build.sh: unexpected argument '$1'" >&2; exit 2 ;;
    esac
done
if [ -z "$duet" ]; then
    # The newer of the repo's release and debug builds, else duet on PATH.
    duet="$(ls -t "$repo"/target/x86_64-unknown-linux-gnu/{release,debug}/duet 2>/dev/null | head -1 || true)"
    [ -n "$duet" ] || duet="$(command -v duet || true)"
fi
[ -n "$duet" ] && [ -x "$duet" ] || { echo "images/postgres/build.sh: no duet binary (cargo build, or --duet PATH)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "images/postgres/build.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }

suite=bookworm
packages=postgresql-15
mirror="${DUET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
base=duet-postgres-base:15
image=duet-postgres:15
key="$( { echo "$suite $packages"; sed -n '/^# ---- base/,/^# ---- end base/p' "$0"; } | sha256sum | cut -c1-16)"
stamp="$(cat "$0" "$here/seed.sql" | sha256sum | cut -c1-16)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/duet/postgres/$key"
t0=$(date +%s)
say() { echo "== $* ($(( $(date +%s) - t0 )) s)" >&2; }

image_stamp() { # the stamp inside image $1, or nothing
    "$duet" run --network none --pull never "$1" -- cat /var/lib/postgresql/duet-postgres.stamp 2>/dev/null || true
}

if [ "$force" = 0 ] && [ "$(image_stamp "$image")" = "$stamp" ]; then
    say "$image is current (stamp $stamp)"
    exit 0
fi

# ---- base: the debootstrapped, trimmed tree as a `docker save` archive
if [ ! -s "$cache/base.tar" ]; then
    mkdir -p "$cache"
    rm -rf "$cache/rootfs.tmp" "$cache/save"
    say "debootstrap --variant=minbase --include=$packages $suite"
    debootstrap --variant=minbase --include="$packages" "$suite" "$cache/rootfs.tmp" "$mirror" \
        > "$cache/debootstrap.log" 2>&1 || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    r="$cache/rootfs.tmp"
    # What a container image does without. dpkg still lists libllvm14 and
    # its libz3; the server loads them only for JIT (llvmjit.so), which the
    # image turns off. Perl serves only postgresql-common's wrappers in
    # /usr/bin (pg_ctlcluster, the psql wrapper); the image runs the server's
    # own binaries from /usr/lib/postgresql/15/bin, which link no perl.
    rm -rf "$r"/var/cache/apt/* "$r"/var/lib/apt/lists/* "$r"/usr/share/doc/* \
        "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/* "$r"/usr/share/i18n \
        "$r"/usr/lib/x86_64-linux-gnu/libLLVM-* "$r"/usr/lib/x86_64-linux-gnu/libz3.so* \
        "$r"/usr/lib/x86_64-linux-gnu/perl* "$r"/usr/lib/x86_64-linux-gnu/libperl.so* \
        "$r"/usr/share/perl "$r"/usr/share/perl5 "$r"/usr/bin/perl* \
        "$r"/usr/lib/postgresql/15/lib/llvmjit* \
        "$r"/usr/lib/postgresql/15/lib/bitcode "$r"/var/lib/postgresql/15 "$r"/etc/postgresql/15 \
        "$r"/var/log/*.log "$r"/var/cache/debconf/*-old
    mkdir -p "$cache/save"
    # /dev is the runtime's (duet never creates device nodes from an image).
    tar --numeric-owner --xattrs --exclude=./dev/* -C "$r" -cf "$cache/save/layer.tar" .
    diff_id="sha256:$(sha256sum "$cache/save/layer.tar" | cut -d' ' -f1)"
    cat > "$cache/save/config.json" <<JSON
{"architecture":"amd64","os":"linux",
 "config":{"User":"postgres",
   "Env":["PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
          "PGDATA=/var/lib/postgresql/data","LANG=C.UTF-8"],
   "Cmd":["postgres"],"WorkingDir":"/var/lib/postgresql",
   "ExposedPorts":{"5432/tcp":{}}},
 "rootfs":{"type":"layers","diff_ids":["$diff_id"]}}
JSON
    echo "[{\"Config\":\"config.json\",\"RepoTags\":[\"$base\"],\"Layers\":[\"layer.tar\"]}]" \
        > "$cache/save/manifest.json"
    tar -C "$cache/save" -cf "$cache/base.tar.tmp" manifest.json config.json layer.tar
    mv "$cache/base.tar.tmp" "$cache/base.tar"
    rm -rf "$cache/rootfs.tmp" "$cache/save"
fi
# ---- end base
say "importing $base ($(( $(stat -c %s "$cache/base.tar") / 1048576 )) MiB)"
"$duet" image import --force --format docker --name "$base" "$cache/base.tar" >&2

# ---- the seeded layer
seeder="duet-postgres-seed-$$"
cleanup() { "$duet" rm -f "$seeder" >/dev/null 2>&1 || true; }
trap cleanup EXIT
say "initdb and seed.sql in a container"
"$duet" run --keep --name "$seeder" --network none "$base" -- sh -euc '
    initdb --auth=trust --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
        --wal-segsize=1 "$PGDATA" >/dev/null
    cat >> "$PGDATA/postgresql.conf" <<CONF
# duet-postgres (images/postgres/build.sh)
listen_addresses = '"'*'"'
unix_socket_directories = '"'/tmp'"'
shared_buffers = 16MB
max_connections = 20
jit = off
min_wal_size = 2MB
max_wal_size = 64MB
logging_collector = off
CONF
    printf "local all all trust\nhost all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n" > "$PGDATA/pg_hba.conf"
    # Loaded with little WAL and none kept: at most 4 MiB of segments recycled.
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses= -c wal_level=minimal -c max_wal_senders=0 -c max_wal_size=4MB" \
        start >/dev/null
    psql -q -h /tmp -U postgres -d postgres -f -
    pg_ctl -D "$PGDATA" -w -m fast stop >/dev/null
    echo '"$stamp"' > /var/lib/postgresql/duet-postgres.stamp
' < "$here/seed.sql"
say "committing $image"
"$duet" image rm "$image" >/dev/null 2>&1 || true
"$duet" commit "$seeder" "$image" >&2
say "done: $image (stamp $stamp)"
