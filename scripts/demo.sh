#!/usr/bin/env bash
# The README's "main job on an embedded default": installs what is missing, then runs the
# self-contained demo (private Tor network + emulated kaspad nodes + two bridges) on loopback.
# It runs inside a fresh network namespace with only loopback when the machine allows it, so the
# private network's exit relays cannot reach anything but 127.0.0.0/8.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
if [ -z "${KTB_IN_NETNS:-}" ] && unshare -n true 2>/dev/null; then
  exec unshare -n env KTB_IN_NETNS=1 bash -c 'ip link set lo up && exec "$0" -m bridge demo "$@"' "$PY" "$@"
fi
echo "note: cannot create a network namespace here; running on the host's loopback" >&2
exec $PY -m bridge demo "$@"
