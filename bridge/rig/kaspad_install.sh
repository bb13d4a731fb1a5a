#!/usr/bin/env bash
# Installs a real rusty-kaspa kaspad from the Rust package registry into a cache and prints the
# binary's path on stdout (progress goes to stderr). Does nothing but print when it is cached.
#
#   bash scripts/kaspad.sh                # pinned version, cached under ~/.cache/kaspa-tor-bridge
#   kaspa-tor-bridge kaspad install       # the same, from the installed package
#   KTB_KASPAD=/path/to/kaspad bash scripts/kaspad.sh   # use that binary, install nothing
#   KTB_KASPAD_VERSION=2.0.1 bash scripts/kaspad.sh     # another published version
#   KTB_KASPAD_PROFILE=release bash scripts/kaspad.sh   # optimised build (slower to build)
#
# The RPC .proto files of the same version (crate kaspa-grpc-core, which cargo downloads as a
# dependency) are copied next to the binary (<cache>/kaspad-<version>-<profile>/proto/): the test
# rig compiles its RPC client from them (bridge/rig/kaspad.py).
#
# The default is cargo's debug profile: it builds in about half the time of a release build on a
# 2-core machine, and simnet with --enable-unsynced-mining makes blocks without proof of work, so
# a debug node keeps up with the tests' 10 blocks/s (figures in docs/benchmarks.md).
set -euo pipefail
if [ -n "${KTB_KASPAD:-}" ]; then
  if [ ! -x "$KTB_KASPAD" ]; then
    echo "kaspad.sh: KTB_KASPAD=$KTB_KASPAD is not an executable file" >&2
    exit 2
  fi
  echo "$KTB_KASPAD"
  exit 0
fi
version=${KTB_KASPAD_VERSION:-2.1.0}  # keep in step with bridge/rig/kaspad.py KASPAD_VERSION
profile=${KTB_KASPAD_PROFILE:-debug}
case "$profile" in debug|release) ;; *) echo "kaspad.sh: KTB_KASPAD_PROFILE must be debug or release" >&2; exit 2;; esac
cache=${KTB_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kaspa-tor-bridge}
root="$cache/kaspad-$version-$profile"
bin="$root/bin/kaspad"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
# build prerequisites (rusty-kaspa compiles its .proto files and RocksDB's bindings)
need_apt=()
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "kaspad.sh: installing build prerequisites: ${need_apt[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "kaspad.sh: cargo is not installed; install Rust (rustup) or set KTB_KASPAD to a kaspad binary" >&2
  exit 2
fi
flags=(--locked --version "$version" --root "$root.partial")
[ "$profile" = debug ] && flags+=(--debug)
echo "kaspad.sh: building kaspad $version ($profile) with cargo install; about 16 min on 2 cores (debug)" >&2
start=$(date +%s)
rm -rf "$root.partial"
cargo install "${flags[@]}" kaspad >&2
rm -f "$root.partial/.crates.toml" "$root.partial/.crates2.json"
# the RPC protos of this very version, from cargo's registry source directory
cargo_home=${CARGO_HOME:-$HOME/.cargo}
proto=$(ls -d "$cargo_home"/registry/src/*/kaspa-grpc-core-"$version"/proto 2>/dev/null | head -n1 || true)
if [ -n "$proto" ]; then
  mkdir -p "$root.partial/proto"
  cp "$proto"/*.proto "$root.partial/proto/"
else
  echo "kaspad.sh: warning: kaspa-grpc-core-$version/proto not found under $cargo_home/registry/src" >&2
fi
rm -rf "$root"
mv "$root.partial" "$root"
echo "kaspad.sh: built in $(( $(date +%s) - start )) s: $bin" >&2
echo "$bin"
