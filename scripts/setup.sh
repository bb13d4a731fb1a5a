#!/usr/bin/env bash
# Installs everything kaspa-tor-bridge needs on a fresh Debian machine (idempotent):
# Debian's tor, socat and obfs4proxy (the censored-network tests run an obfs4 bridge), then this
# package with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
command -v tor >/dev/null 2>&1 || need_apt+=(tor)
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
command -v obfs4proxy >/dev/null 2>&1 || command -v lyrebird >/dev/null 2>&1 || need_apt+=(obfs4proxy)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
here=$(pwd -P)
# Install (editable) unless this very checkout is already what `import bridge` finds, with the
# test and rig extras importable.
found=$(cd / && $PY -c 'import bridge, grpc, hypothesis, pytest_trio, stem, h2, typer; print(bridge.__file__)' 2>/dev/null || true)
if [ "$found" != "$here/bridge/__init__.py" ]; then
  $PY -m pip install -q --disable-pip-version-check -e '.[test,rig]'
fi
