#!/bin/sh
# Process 1 of one test host (run by tests/nshosts.py inside the host's own network, PID, mount and
# UTS namespaces): give the host its name, its own home, Ray temp dir and the shared storage, then
# become its sshd. Killing this process kills every process of the host.
#   boot.sh NAME HOME RAY_TMP SHARED ETC SSHD_CONFIG
set -eu
hostname "$1"
mkdir -p /tmp/ray /run/sshd
mount --bind "$5/hosts" /etc/hosts              # its own name and address
mount --bind "$5/resolv.conf" /etc/resolv.conf  # no name server: the machine's is unreachable from here
mount --bind "$2" /root            # the host's own ~ (ray up copies its bootstrap files there)
mount --bind "$3" /tmp/ray         # the host's own Ray sessions: `ray stop` and logs stay per host
mount --bind "$4" /mnt             # storage every host sees at the same path, as NFS would be
ip link set lo up
exec /usr/sbin/sshd -D -e -f "$6"
