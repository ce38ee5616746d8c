#!/bin/sh
# Docker with duet's microVM runtime (`--runtime duet-vm`: duet-runc with
# runtimeArgs --isolation vm), run inside the testbed where /dev/kvm is a
# real nested KVM; for tests/docker_vm_testbed.rs. One private dockerd
# (its own data root, exec root, socket; no bridge, no iptables) with a
# busybox image made by `docker import`. Output format: see cases-lib.sh.

. "$(dirname "$0")/cases-lib.sh"

ln -sf "$DUET_EXE" /usr/local/bin/duet-runc
D=/tmp/dockerd
mkdir -p $D
cat > $D/daemon.json <<'EOF'
{"runtimes": {"duet-vm": {"path": "/usr/local/bin/duet-runc", "runtimeArgs": ["--isolation", "vm"]}},
 "storage-driver": "vfs"}
EOF
SOCK=unix://$D/docker.sock
dk() { timeout 240 docker --host=$SOCK "$@"; }

start_dockerd() {
    dockerd --data-root $D/data --exec-root $D/exec --pidfile $D/dockerd.pid \
        --config-file $D/daemon.json --host=$SOCK \
        --bridge=none --iptables=false --ip6tables=false --ip-forward=false \
        --ip-masq=false --userland-proxy=false > $D/dockerd.log 2>&1 &
    i=0
    until dk version --format '{{.Server.Version}}' > /dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -ge 600 ]; then tail -30 $D/dockerd.log; return 1; fi
        sleep 0.2
    done
    echo "dockerd up after $i polls"
    R=/tmp/bb-rootfs
    mkdir -p $R/bin $R/etc $R/tmp $R/root
    cp /bin/busybox $R/bin/busybox
    for a in sh echo cat sleep ls id hostname pwd grep tty head dd true httpd nc ip stty; do ln -sf busybox $R/bin/$a; done
    tar -C $R -cf $D/bb.tar . && dk import --change 'ENV PATH=/bin' --change 'WORKDIR /tmp' $D/bb.tar busybox > /dev/null && echo imported
}
case_ dockerd_up start_dockerd

case_ docker_vm_echo dk run --rm --runtime duet-vm busybox echo hi-from-a-microvm
# A read-only root without /run (this image has none): the guest goes without it.
case_ docker_vm_read_only dk run --rm --read-only --runtime duet-vm busybox sh -c 'echo ro-ok; touch /x 2>/dev/null || echo ro-root'
case_ docker_vm_exit7 dk run --rm --runtime duet-vm busybox sh -c 'exit 7'
case_ docker_vm_missing dk run --rm --runtime duet-vm busybox /no/such/program
case_ docker_vm_env_user dk run --rm --runtime duet-vm -e GREETING=hello -w /root -u 1000:1000 busybox sh -c 'echo "$GREETING $(id -u):$(id -g) $(pwd)"; uname -r'
case_ docker_vm_tty dk run --rm -t --runtime duet-vm busybox sh -c 'test -t 0 && echo stdin-is-a-tty; stty size; echo through-a-pty'
docker_vm_detached() {
    id=$(dk run -d --runtime duet-vm busybox sh -c 'echo detached-up; echo in-guest > /root/w; trap "echo got-term; exit 0" TERM; while true; do sleep 1; done') || return 1
    i=0
    until dk logs "$id" 2>&1 | grep -q detached-up || [ $i -ge 600 ]; do i=$((i + 1)); sleep 0.2; done
    dk logs "$id" | sed 's/^/logs: /'
    echo "exec: $(dk exec "$id" cat /root/w)"
    dk exec "$id" sh -c 'exit 5'
    echo "exec-rc $?"
    echo "diff: $(dk diff "$id" | grep -c /root/w)"
    dk stop -t 20 "$id" > /dev/null && echo stopped
    echo "exit-code $(dk inspect --format '{{.State.ExitCode}}' "$id")"
    dk rm "$id" > /dev/null && echo removed
}
case_ docker_vm_detached docker_vm_detached
# Directory volumes: a virtio-fs share (and a virtiofsd) each; the host sees
# the guest's writes, a read-only volume refuses them.
docker_vm_volumes() {
    mkdir -p /tmp/vol-rw /tmp/vol-ro
    echo from-the-host > /tmp/vol-ro/given
    dk run --rm --runtime duet-vm -v /tmp/vol-rw:/data -v /tmp/vol-ro:/in:ro busybox \
        sh -c 'cat /in/given; echo from-the-guest > /data/made; (echo x > /in/nope) 2>/dev/null && echo ro-written || echo ro-refused' || return 1
    echo "host-sees: $(cat /tmp/vol-rw/made)"
}
case_ docker_vm_volumes docker_vm_volumes
# exec as the image's (or -u) user: the agent switches ids in the guest.
docker_vm_exec_user() {
    id=$(dk run -d --runtime duet-vm -u 1000:1000 busybox sleep 1000) || return 1
    echo "exec-ids: $(dk exec "$id" sh -c 'echo $(id -u):$(id -g)')"
    echo "exec-root-ids: $(dk exec -u 0:0 "$id" sh -c 'echo $(id -u):$(id -g)')"
    dk rm -f "$id" > /dev/null && echo removed
}
case_ docker_vm_exec_user docker_vm_exec_user
docker_vm_kill() {
    id=$(dk run -d --runtime duet-vm busybox sleep 1000) || return 1
    sleep 1
    dk kill "$id" > /dev/null && echo killed
    echo "exit-code $(dk wait "$id")"
    dk rm "$id" > /dev/null && echo removed
}
case_ docker_vm_kill docker_vm_kill
docker_vm_leftovers() {
    live() { for p in /proc/[0-9]*; do [ "$(sed -n 's/^State:\t\([A-Z]\).*/\1/p' $p/status 2>/dev/null)" != Z ] && tr '\0' ' ' 2>/dev/null < $p/cmdline && echo; done 2>/dev/null; }
    echo "containers $(dk ps -aq | wc -l)"
    echo "keepers $(live | grep -c '[_]_vm-keeper')"
    echo "virtiofsd $(live | grep -c '^/usr/lib/qemu/virtiofs[d]')"
    echo "vmms $(for q in /proc/[0-9]*; do grep -l "^Uid:.9[0-9][0-9][0-9][0-9][0-9]" $q/status 2>/dev/null; done | wc -l)"
}
case_ docker_vm_leftovers docker_vm_leftovers
kill "$(cat $D/dockerd.pid)" 2>/dev/null
i=0; while [ -e /proc/"$(cat $D/dockerd.pid 2>/dev/null)" ] && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done

# The same image with Docker's own bridge network: dockerd in a network
# namespace of its own (docker0, veths and docker-proxy there, no iptables),
# so `docker run -p` reaches a microVM that took the container's address.
start_bridged_dockerd() {
    unshare -n sh -c 'ip link set lo up; exec dockerd --data-root '$D'/data --exec-root '$D'/exec2 \
        --pidfile '$D'/dockerd2.pid --config-file '$D'/daemon.json --host='$SOCK' \
        --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false' > $D/dockerd2.log 2>&1 &
    i=0
    until dk version --format '{{.Server.Version}}' > /dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -ge 600 ]; then tail -30 $D/dockerd2.log; return 1; fi
        sleep 0.2
    done
    echo "bridged dockerd up"
}
case_ dockerd_bridged_up start_bridged_dockerd
in_dockerd_ns() { nsenter -t "$(cat $D/dockerd2.pid)" -n "$@"; }
get() { printf 'GET /hostname HTTP/1.0\r\n\r\n' | in_dockerd_ns nc -w 10 "$1" "$2" | tail -n 1; }
docker_vm_published() {
    id=$(dk run -d --runtime duet-vm --hostname vm-behind-docker -p 8090:80 busybox httpd -f -p 80 -h /etc) || return 1
    ip=$(dk inspect -f '{{.NetworkSettings.IPAddress}}' "$id")
    echo "docker-ip $ip"
    i=0
    until [ -n "$(get "$ip" 80)" ] || [ $i -ge 120 ]; do i=$((i + 1)); sleep 1; done
    echo "by-address: $(get "$ip" 80)"
    echo "published: $(get 127.0.0.1 8090)"
    echo "guest-eth0: $(dk exec "$id" ip addr show eth0 | grep -c "inet $ip/")"
    dk rm -f "$id" > /dev/null && echo removed
}
case_ docker_vm_published docker_vm_published
kill "$(cat $D/dockerd2.pid)" 2>/dev/null
