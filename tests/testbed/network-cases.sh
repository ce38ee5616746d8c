#!/bin/sh
# duet's bridge network with microVMs (issue 12), for tests/network_testbed.rs:
# a server in a VM reached by address and through a published port, VM and
# container reaching each other, and nothing left afterwards. Runs in a
# network namespace of its own inside the testbed.
# Output format: see cases-lib.sh.

if [ -z "$NETNS_DONE" ]; then
    NETNS_DONE=1 exec unshare -n sh "$0" "$@"
fi
. "$(dirname "$0")/cases-lib.sh"
ip link set lo up

HTTPD='mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www'

case_ vm_up duet run -d --name vmweb --isolation vm --network bridge -p 8080:80 busybox -- sh -c "$HTTPD"
case_ ps duet ps
case_ vm_by_address wait_for 10.89.0.2 80
case_ vm_published wait_for 127.0.0.1 8080
case_ vm_eth0 duet exec vmweb sh -c 'ip addr show eth0; ip route; cat /etc/resolv.conf /etc/hosts'
case_ ct_up duet run -d --name ctweb --isolation container --network bridge busybox -- sh -c "$HTTPD"
case_ ct_to_vm duet run --isolation container --network bridge busybox -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 10 10.89.0.2 80 | tail -n 1"
case_ vm_to_ct duet run --isolation vm --network bridge busybox -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 10 10.89.0.3 80 | tail -n 1"
case_ rm duet rm -f vmweb ctweb
case_ left_after_rm sh -c 'echo links=$(ip link | grep -c '^[0-9]') rules=$(nft list ruleset | wc -l) leases=$(ls /tmp/duet/network/duet0/leases | wc -l)'
# kill -9 of a VM's monitor, then gc.
case_ vm_k9_up duet run -d --name vmk9 --isolation vm --network bridge -p 8081:80 busybox -- sleep 600
case_ vm_k9 sh -c 'for f in /tmp/duet/instances/vmk9-*/meta.json; do pid=$(sed -n "s/.*\"owner_pid\": *\([0-9]*\).*/\1/p" "$f"); done; kill -9 "$pid"; sleep 1; '"$DUET_EXE"' gc >/dev/null; echo links=$(ip link | grep -c '^[0-9]') rules=$(nft list ruleset | wc -l) leases=$(ls /tmp/duet/network/duet0/leases | wc -l)'
