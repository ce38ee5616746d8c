#!/bin/sh
# One image, both isolations (issue 4), for tests/commit_testbed.rs: a change
# made under one isolation and committed is seen under the other; deletions
# stay deleted; the committed layer holds only the change.
# Output format: see cases-lib.sh.

. "$(dirname "$0")/cases-lib.sh"

# VM -> container
case_ vm_write duet run --isolation vm --keep --name fromvm busybox -- \
    sh -c 'echo written-in-vm > /etc/note; rm /etc/passwd; head -c 200000 /dev/zero > /blob'
case_ vm_commit sh -c "duet commit \$(ls /tmp/duet/instances | grep '^fromvm-') imgvm"
case_ vm_to_container duet run --isolation container imgvm -- \
    sh -c 'cat /etc/note; test -e /etc/passwd && echo passwd || echo no-passwd; wc -c < /blob'
case_ vm_to_vm duet run --isolation vm imgvm -- \
    sh -c 'cat /etc/note; test -e /etc/passwd && echo passwd || echo no-passwd'

# container -> VM
case_ ct_write duet run --isolation container --keep --name fromct busybox -- \
    sh -c 'echo written-in-container > /etc/note; rm /bin/vi'
case_ ct_commit sh -c "duet commit \$(ls /tmp/duet/instances | grep '^fromct-') imgct"
case_ ct_to_vm duet run --isolation vm imgct -- \
    sh -c 'cat /etc/note; test -e /bin/vi && echo vi || echo no-vi'

# The base image is untouched by either.
case_ base_vm duet run --isolation vm busybox -- sh -c 'test -e /etc/note && echo note || echo no-note; test -e /etc/passwd && echo passwd'
case_ cleanup sh -c 'for i in $(ls /tmp/duet/instances); do duet rm $i >/dev/null || exit 1; done; ls /tmp/duet/instances | wc -l'
