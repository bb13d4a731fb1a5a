#!/usr/bin/env bash
# Builds the local Debian base image all deploy images start FROM (no registry needed):
# debootstrap a minimal Debian rootfs, then `docker import` it as $KTB_BASE_IMAGE.
#
# Idempotent and cached: the image carries a label with the hash of this recipe (this script,
# suite, mirror, variant, extra packages); when an image with that tag and label exists, nothing
# is done. Downloaded .debs are kept in $KTB_DEBOOTSTRAP_CACHE so a rebuild does not download
# again. Needs root and docker; installs debootstrap with apt-get when it is missing.
#
#   bash deploy/base/build-base.sh            # builds ktb-base:bookworm if missing/outdated
#   KTB_BASE_FORCE=1 bash deploy/base/build-base.sh   # rebuild anyway
set -euo pipefail

IMAGE=${KTB_BASE_IMAGE:-ktb-base:bookworm}
SUITE=${KTB_DEBIAN_SUITE:-bookworm}
MIRROR=${KTB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
VARIANT=minbase
# Kept small on purpose: images add their own packages with apt-get at build time.
INCLUDE=${KTB_BASE_INCLUDE:-ca-certificates}
CACHE=${KTB_DEBOOTSTRAP_CACHE:-/var/cache/ktb-debootstrap/$SUITE}

recipe=$( { cat "$0"; echo "$SUITE $MIRROR $VARIANT $INCLUDE"; } | sha256sum | cut -c1-16)

have=$(docker image inspect --format '{{ index .Config.Labels "org.kaspa-tor-bridge.recipe" }}' \
       "$IMAGE" 2>/dev/null || true)
if [ "$have" = "$recipe" ] && [ -z "${KTB_BASE_FORCE:-}" ]; then
  echo "base image $IMAGE is up to date (recipe $recipe)"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || { echo "build-base.sh: needs root (debootstrap)" >&2; exit 1; }
if ! command -v debootstrap >/dev/null; then
  echo "installing debootstrap (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

work=$(mktemp -d /var/tmp/ktb-base.XXXXXX)
cleanup() {
  # debootstrap may leave /proc, /sys mounted inside the rootfs on failure
  for m in proc sys dev/pts dev; do umount -l "$work/rootfs/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$CACHE"

t0=$(date +%s)
echo "building base image $IMAGE: debootstrap $VARIANT $SUITE from $MIRROR (recipe $recipe)"
debootstrap --variant="$VARIANT" --include="$INCLUDE" --cache-dir="$CACHE" \
  "$SUITE" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -30 "$work/debootstrap.log" >&2; exit 1; }

r=$work/rootfs
# Container hygiene: no daemons started by package scripts, no docs/caches, small apt footprint.
printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"; chmod 755 "$r/usr/sbin/policy-rc.d"
cat >"$r/etc/apt/apt.conf.d/90ktb" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT
cat >"$r/etc/dpkg/dpkg.cfg.d/90ktb-nodoc" <<'DPKG'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
echo "deb $MIRROR $SUITE main" >"$r/etc/apt/sources.list"
echo "deb $MIRROR $SUITE-updates main" >>"$r/etc/apt/sources.list"
echo "deb http://security.debian.org/debian-security $SUITE-security main" >>"$r/etc/apt/sources.list"
rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/usr/share/doc/* "$r"/usr/share/man/* \
       "$r"/var/log/*.log "$r"/tmp/* "$r"/root/.cache
: >"$r/etc/hostname"; : >"$r/etc/machine-id" 2>/dev/null || true

tar --numeric-owner --xattrs -C "$r" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL org.kaspa-tor-bridge.recipe=$recipe" \
  --change "LABEL org.kaspa-tor-bridge.base=debian-$SUITE-$VARIANT" \
  - "$IMAGE" >/dev/null
echo "base image $IMAGE built in $(( $(date +%s) - t0 ))s (recipe $recipe)"
