#!/usr/bin/env bash
# Install the Debian packages the test suite needs, when they are missing.
# chromium: the real browser tests/test_browser.py drives (Playwright uses it; it never downloads its own).
set -euo pipefail
need=()
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || need+=(postgresql)
command -v useradd >/dev/null || need+=(passwd)
[ -x /usr/bin/chromium ] || need+=(chromium)
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
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
