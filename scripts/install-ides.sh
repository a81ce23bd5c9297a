#!/usr/bin/env bash
# Install the IDEs that sessions run (JupyterLab, Notebook 7, code-server) where every user can
# read them: the project's own Python lives under /root, which session users cannot enter.
# Usage: scripts/install-ides.sh [PREFIX]   (default /opt/openworkbench; idempotent)
set -euo pipefail
prefix=${1:-/opt/openworkbench}
code_server_version=4.100.3
mkdir -p "$prefix"

install_jupyter() {
    local venv=$prefix/jupyter
    [ -f "$venv/.installed" ] && return
    echo "install-ides: JupyterLab and Notebook into $venv" >&2
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'jupyterlab>=4.2,<5' 'notebook>=7.2,<8'
    touch "$venv/.installed"
}

# @vscode/ripgrep downloads rg from GitHub in its postinstall, which this network cannot reach. It
# first looks in $TMPDIR/vscode-ripgrep-cache-<version>/ for the release archive: put Debian's rg there.
seed_ripgrep_cache() {
    local dir=$1 version asset
    for version in 1.15.5 1.15.6 1.15.9 1.15.10 1.15.11; do
        asset=ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz
        mkdir -p "$dir/vscode-ripgrep-cache-$version"
        tar czf "$dir/vscode-ripgrep-cache-$version/$asset" -C /usr/bin rg
    done
}

install_code_server() {
    local dir=$prefix/code-server
    [ -f "$dir/.installed" ] && return
    local need=()
    dpkg -s libkrb5-dev >/dev/null 2>&1 || need+=(libkrb5-dev)
    command -v rg >/dev/null || need+=(ripgrep)
    if [ ${#need[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    echo "install-ides: code-server $code_server_version into $dir" >&2
    mkdir -p "$dir"
    [ -f "$dir/package.json" ] || echo '{"private": true}' > "$dir/package.json"
    local tmp
    tmp=$(mktemp -d)
    seed_ripgrep_cache "$tmp"
    # Only a local install with these settings succeeds on Node 20 (see docs/sessions.md).
    (cd "$dir" && TMPDIR=$tmp npm_config_unsafe_perm=true npm_config_yes=true \
        npm install --no-audit --no-fund --loglevel=error "code-server@$code_server_version")
    rm -rf "$tmp"
    touch "$dir/.installed"
}

install_jupyter
install_code_server
chmod -R a+rX "$prefix"
