#!/usr/bin/env bash
# Install what opcache-guard and its tests need on Debian 12: the real servers the lab and
# the tests run (php-fpm, HAProxy, etcd, PoolCounter, wrk) and a virtual environment with
# the package. Safe to run again: it installs only what is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OPCACHE_GUARD_VENV:-$ROOT/.venv}"
PACKAGES=(php8.2-fpm php8.2-cli haproxy etcd-server etcd-client poolcounter wrk)

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing Debian packages: ${missing[*]}" >&2
        echo "setup: install them with: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup: creating the virtual environment $VENV" >&2
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test]"
