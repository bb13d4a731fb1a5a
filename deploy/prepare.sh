#!/usr/bin/env bash
# Prepares, with network access, what the compose test builds its images from: the local base
# image (debootstrap + docker import; there is no registry) and a wheelhouse of the Python
# dependencies (containers here cannot reach PyPI). Both are cached; a second run is a no-op.
# scripts/test.sh runs this before the suite enters its loopback-only network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "deploy/prepare.sh: no usable docker engine; the compose test will be skipped" >&2
  exit 0
fi
bash deploy/base/build-base.sh
${PYTHON:-python3} -m tests.deploy.images >/dev/null
