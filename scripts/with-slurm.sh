#!/usr/bin/env bash
# Run a command with a throwaway single-node Slurm cluster; stop it after.
# The command sees WORKBENCH_TEST_SLURM_CONF (the cluster's slurm.conf). Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d /tmp/owb-slurm.XXXXXX)
trap '"$here/slurm-test-cluster.sh" stop "$dir"' EXIT
WORKBENCH_TEST_SLURM_CONF=$("$here/slurm-test-cluster.sh" start "$dir")
export WORKBENCH_TEST_SLURM_CONF
set +e
"$@"
exit $?
