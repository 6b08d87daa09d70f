#!/bin/sh
# A Debian base image with Python, made from Debian's packages only, for hosts that cannot pull from a
# container registry (the Dockerfile's BASE_IMAGE build argument then names it). Needs root, debootstrap
# and podman. About a minute on two cores.
#   sh deploy/podman/make-base.sh [TAG]       (default localhost/debian-python:bookworm)
set -eu
TAG=${1:-localhost/debian-python:bookworm}
ROOT=$(mktemp -d /var/tmp/vary-rootfs.XXXXXX)
trap 'rm -rf "$ROOT" "$ROOT.tar"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$ROOT" http://deb.debian.org/debian
cat > "$ROOT/etc/apt/sources.list" <<'SRC'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/tmp/*
tar --numeric-owner -C "$ROOT" -cf "$ROOT.tar" .
podman import --change 'CMD ["/usr/bin/python3"]' --change 'ENV LANG=C.UTF-8' "$ROOT.tar" "$TAG"
