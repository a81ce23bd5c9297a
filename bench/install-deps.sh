#!/usr/bin/env bash
# What `make bench` compares against, each in its own place; idempotent (stamps), so a second run is instant.
#   wrk                      Debian's HTTP load generator (one C thread: leaves the 2 cores to the servers)
#   .bench-venv/             JupyterHub 5 (the hub process), from /usr/bin/python3
#   IDE_PREFIX/jupyter       + the same jupyterhub, for jupyterhub-singleuser: it must import jupyterhub
#                            and run the very JupyterLab our sessions run (adds packages, upgrades none)
#   .bench-node/             configurable-http-proxy from npm (JupyterHub's default proxy)
# Usage: bench/install-deps.sh [IDE_PREFIX]
set -euo pipefail
cd "$(dirname "$0")/.."
ide_prefix=${1:-/opt/openworkbench}
hub_version=5.5.4
chp_version=5.3.0

if ! command -v wrk >/dev/null; then
    echo "bench: installing wrk" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi

if [ ! -f ".bench-venv/.jupyterhub-$hub_version" ]; then
    echo "bench: JupyterHub $hub_version into .bench-venv" >&2
    test -x .bench-venv/bin/python || /usr/bin/python3 -m venv .bench-venv
    .bench-venv/bin/pip install --quiet --upgrade pip
    .bench-venv/bin/pip install --quiet "jupyterhub==$hub_version"
    touch ".bench-venv/.jupyterhub-$hub_version"
fi

singleuser=$ide_prefix/jupyter
if [ ! -f "$singleuser/.bench-jupyterhub-$hub_version" ]; then
    echo "bench: jupyterhub $hub_version (for jupyterhub-singleuser) into $singleuser" >&2
    "$singleuser/bin/pip" install --quiet "jupyterhub==$hub_version"
    chmod -R a+rX "$singleuser"
    touch "$singleuser/.bench-jupyterhub-$hub_version"
fi

if [ ! -f ".bench-node/.chp-$chp_version" ]; then
    echo "bench: configurable-http-proxy $chp_version into .bench-node" >&2
    mkdir -p .bench-node
    [ -f .bench-node/package.json ] || echo '{"private": true}' > .bench-node/package.json
    (cd .bench-node && npm_config_yes=true npm install --no-audit --no-fund --loglevel=error \
        "configurable-http-proxy@$chp_version")
    touch ".bench-node/.chp-$chp_version"
fi
