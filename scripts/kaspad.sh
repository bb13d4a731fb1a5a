#!/usr/bin/env bash
# Installs the pinned rusty-kaspa kaspad from the Rust package registry into a cache (once) and
# prints the binary's path. The logic ships with the package: bridge/rig/kaspad_install.sh
# (also `kaspa-tor-bridge kaspad install`).
set -euo pipefail
exec bash "$(dirname "$0")/../bridge/rig/kaspad_install.sh" "$@"
