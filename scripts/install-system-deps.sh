#!/usr/bin/env bash
# Install the Debian packages the test suite needs, when they are missing.
# chromium: the real browser tests/test_browser.py drives (Playwright uses it; it never downloads its own).
set -euo pipefail
need=()
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || need+=(postgresql)
command -v useradd >/dev/null || need+=(passwd)
[ -x /usr/bin/chromium ] || need+=(chromium)
# haproxy: the load balancer tests/test_failover.py puts in front of two replicas. The test runs its own haproxy
# in the foreground on free ports; Debian's package would also enable a system service, so none is started here.
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then need+=(haproxy); start_haproxy=no; fi
# A real single-node Slurm cluster for the Slurm tests (scripts/slurm-test-cluster.sh).
for cmd in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
    command -v "${cmd%%:*}" >/dev/null || [ -x "/usr/sbin/${cmd%%:*}" ] || need+=("${cmd#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-system-deps: need root to install: ${need[*]}" >&2
        exit 1
    fi
    echo "install-system-deps: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d exit 101: dpkg starts no service while installing (haproxy's would take port 80 for nothing).
    if [ "${start_haproxy:-}" = no ] && [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    if [ "${start_haproxy:-}" = no ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl disable --now haproxy >/dev/null 2>&1 || true
    fi
fi
