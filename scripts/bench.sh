#!/usr/bin/env bash
# The benchmarks' prerequisites, then the benchmarks (each in a fresh network namespace with only
# loopback). Installs what is missing: scripts/setup.sh (tor, socat, this package) plus Debian's
# nghttp2-proxy (nghttpx, the C reference of relay_bench). Usage:
#   bash scripts/bench.sh                 # relay, memory and Tor benchmarks -> docs/benchmarks.md
#   bash scripts/bench.sh --quick         # each benchmark's --quick mode, nothing written
#   bash scripts/bench.sh relay_bench --gens raw    # one benchmark, extra arguments passed on
#   bash scripts/bench.sh kaspad_bench --out docs/benchmarks.md   # real kaspad (builds it once)
#   bash scripts/bench.sh flood_bench --out docs/benchmarks.md    # issue G floods (~1 h; --quick)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v nghttpx >/dev/null 2>&1 && [ ! -x /usr/sbin/nghttpx ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nghttp2-proxy >/dev/null
fi
PY=${PYTHON:-python3}
run() {  # run <module> <args...> inside a network namespace with only loopback
  unshare -rn bash -c 'ip link set lo up && exec "$0" -m "bench.$1" "${@:2}"' "$PY" "$@"
}
case "${1:-}" in
  relay_bench|memory_bench|tor_bench|flood_bench) run "$@" ;;
  kaspad_bench) KTB_KASPAD=$(bash scripts/kaspad.sh); export KTB_KASPAD; run "$@" ;;
  --quick) for b in relay_bench memory_bench tor_bench; do run "$b" --quick; done ;;
  "") for b in relay_bench memory_bench tor_bench; do run "$b" --out docs/benchmarks.md; done ;;
  *) echo "usage: $0 [--quick | relay_bench|memory_bench|tor_bench|kaspad_bench|flood_bench" \
          "[args...]]" >&2
     exit 2 ;;
esac
