# Test image of a real rusty-kaspa kaspad for tests/deploy/test_compose.py: NOT for production
# (production uses the upstream image, kaspanet/rusty-kaspad). There is no registry here, so the
# test builds this from the local Debian base and the kaspad binary cached by scripts/kaspad.sh
# (built on this Debian host with cargo; dynamically linked against glibc, libstdc++, libgcc_s,
# all in the bookworm base). Build context: this file and the binary, named `kaspad`.
#
# Same runtime layout as upstream's docker/Dockerfile.kaspad, so deploy/docker-compose.yml runs
# it unchanged: the binary at /app/kaspad, tini at /sbin/tini as ENTRYPOINT with /app/kaspad as
# CMD, an unprivileged user `kaspa` with HOME=/home/kaspa (the compose file's kaspad-data volume
# and --appdir live there), no VOLUME and no EXPOSE. Upstream is alpine and its health-check
# tool is busybox `nc`; here netcat-openbsd provides the same `nc -z -w`.
ARG BASE_IMAGE=ktb-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tini netcat-openbsd >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && { [ -e /sbin/tini ] || ln -s /usr/bin/tini /sbin/tini; } \
 && groupadd -r kaspa \
 && useradd -r -g kaspa -d /home/kaspa -s /usr/sbin/nologin kaspa \
 && mkdir -p /home/kaspa /app \
 && chown -R kaspa:kaspa /home/kaspa /app
WORKDIR /app
COPY --chown=kaspa:kaspa kaspad /app/kaspad
ENV HOME=/home/kaspa
USER kaspa
ENTRYPOINT ["/sbin/tini", "--"]
CMD ["/app/kaspad"]
