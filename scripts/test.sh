#!/usr/bin/env bash
# The README's test command: installs what is missing, then runs lint, types and the whole suite.
# The suite runs inside a fresh network namespace with only loopback when the machine allows it,
# so no test can reach anything but 127.0.0.0/8.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
$PY -m ruff check .
$PY -m mypy
# downloads happen here, before the network namespace: the compose test's images, and the real
# kaspad of the tests/kaspad tier (cargo install of the pinned version into a cache, once;
# KTB_KASPAD=/path/to/kaspad uses a given binary; KTB_SKIP_KASPAD=1 skips the build, and then
# the tier is skipped, or fails when CI is set)
if [ -z "${KTB_IN_NETNS:-}" ]; then
  if [ -z "${KTB_SKIP_KASPAD:-}" ]; then
    KTB_KASPAD=$(bash scripts/kaspad.sh)
    export KTB_KASPAD
  fi
  bash deploy/prepare.sh
fi
if [ -z "${KTB_IN_NETNS:-}" ] && unshare -n true 2>/dev/null; then
  exec unshare -n env KTB_IN_NETNS=1 bash -c 'ip link set lo up && exec "$0" -m pytest "$@"' "$PY" "$@"
fi
exec $PY -m pytest "$@"
