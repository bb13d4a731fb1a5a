#!/usr/bin/env bash
# Installs everything kaspa-tor-bridge needs on a fresh Debian machine (idempotent):
# Debian's tor and socat, then this package with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
command -v tor >/dev/null 2>&1 || need_apt+=(tor)
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
if ! $PY -c 'import bridge, grpc, hypothesis, pytest_trio' >/dev/null 2>&1 \
   || ! $PY -m pip show kaspa-tor-bridge >/dev/null 2>&1; then
  $PY -m pip install -q --disable-pip-version-check -e '.[test]'
fi
