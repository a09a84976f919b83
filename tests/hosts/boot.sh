#!/bin/sh
# Process 1 of one test host (run by tests/nshosts.py inside the host's own network, PID, mount and
# UTS namespaces): give the host its name, its own Ray temp dir, name files and root's home (ETC holds
# hosts, resolv.conf and a passwd whose root home is the host's own folder), the shared storage at
# /mnt, then become its sshd. Killing this process kills every process of the host.
#   boot.sh NAME RAY_TMP SHARED ETC SSHD_CONFIG
set -eu
hostname "$1"
mkdir -p /tmp/ray /run/sshd
mount --bind "$2" /tmp/ray                      # the host's own Ray sessions: `ray stop` and logs stay per host
mount --bind "$3" /mnt                          # storage every host sees at the same path, as NFS would be
mount --bind "$4/hosts" /etc/hosts              # its own name and address
mount --bind "$4/resolv.conf" /etc/resolv.conf  # no name server: the machine's is unreachable from here
mount --bind "$4/passwd" /etc/passwd            # root's ~ is the host's own (ray up copies its files there)
ip link set lo up
exec /usr/sbin/sshd -D -e -f "$5"
