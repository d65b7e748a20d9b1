#!/usr/bin/env bash
# Build the offline base image `trusted-sandbox/base:bookworm` without any container registry:
# debootstrap a minimal Debian bookworm root file system from Debian's own mirror, add
# Python 3.11 (Debian's), then `docker import` the tarball.
#
# Usage: images/base/build.sh [--force]
# Env:   SANDBOX_BASE_IMAGE (tag, default trusted-sandbox/base:bookworm)
#        DEBIAN_MIRROR      (default http://deb.debian.org/debian)
# Needs: root (debootstrap chroots), the `debootstrap` Debian package, a reachable Debian mirror.
set -euo pipefail

TAG="${SANDBOX_BASE_IMAGE:-trusted-sandbox/base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

if [[ $FORCE -eq 0 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base: $TAG already present (use --force to rebuild)"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "base: debootstrap needs root" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null; then
  echo "base: installing debootstrap (Debian package)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

start=$(date +%s)
work=$(mktemp -d /var/tmp/sandbox-base.XXXXXX)
cleanup() {
  # unmount anything debootstrap left mounted before removing the tree
  for m in proc sys dev/pts dev; do umount -l "$work/rootfs/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Python from Debian (3.11 in bookworm, which the package requires), TLS roots, tini as PID 1.
include="ca-certificates,python3,python3-venv,python3-pip,tini,tzdata"
debootstrap --variant=minbase --include="$include" bookworm "$work/rootfs" "$MIRROR"

# Trim: apt lists, caches, docs and man pages are not needed at run time.
chroot "$work/rootfs" apt-get clean
rm -rf "$work/rootfs"/var/lib/apt/lists/* "$work/rootfs"/var/cache/apt/*.bin \
       "$work/rootfs"/usr/share/doc/* "$work/rootfs"/usr/share/man/* \
       "$work/rootfs"/usr/share/locale/* "$work/rootfs"/var/log/*.log
# Sources for apt inside image builds (same mirror, plus security updates).
cat > "$work/rootfs/etc/apt/sources.list" <<SRC
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
# Containers get their resolver from Docker; do not ship the host's.
: > "$work/rootfs/etc/resolv.conf"
: > "$work/rootfs/etc/hostname"

tar -C "$work/rootfs" --numeric-owner -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap bookworm minbase + python3 (images/base/build.sh)" \
  - "$TAG"

echo "base: built $TAG in $(( $(date +%s) - start ))s"
