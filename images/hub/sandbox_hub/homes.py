"""Per-user home volumes with a hard size cap that persist across server restarts.

What works on a plain Docker engine, and why this design:

- ``--storage-opt size=`` limits a container's *root* layer, and only on overlay2 over XFS
  with ``pquota``, devicemapper, btrfs or zfs: not volumes, and not fuse-overlayfs.
- The ``local`` volume driver calls mount(2) directly: ``type=tmpfs,o=size=…`` is capped but
  lives in memory and vanishes (a home must persist), and ``o=loop`` on an image file is a
  mount(8) feature the kernel rejects (``invalid argument``; measured on Docker 20.10).
- An XFS or ext4 project quota needs the host's data file system mounted with ``prjquota``:
  a host change, not something a stack can ship.

So each user's home is an **ext4 file system in an image file** (``<user>.ext4`` in the
stack's ``<stack>-home-images`` volume; sparse, so it costs only what is written). Before a
spawn the hub runs a short-lived helper container (the hub image, no network, no
capabilities, access to loop devices only through two device-cgroup rules) that creates the
image (``mkfs.ext4 -m 0 -E root_owner=1000:1000``), grows it if the grant's cap was raised,
and attaches it to a loop device; the hub then (re)creates the ``<stack>-home-<user>``
volume as ``type=ext4,device=/dev/loopN,o=nodev,nosuid``. Writing past the cap fails with
``ENOSPC`` inside the notebook; the host only ever gives the image its cap. After the
server stops, the volume (a mount recipe, no data) is removed and the loop device detached,
so a loop device number never points a stale volume at another user's image.

A home from before this scheme (a plain named volume) is copied into the new image once
(``mkfs.ext4 -d``), then the plain volume is removed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import docker
from docker.errors import APIError, ContainerError, NotFound

log = logging.getLogger("sandbox.hub.homes")

LABEL_STACK = "org.trusted-sandbox.stack"
LABEL_KIND = "org.trusted-sandbox.kind"
LABEL_USER = "org.trusted-sandbox.user"
UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
MIN_SIZE = 16 * 1024**2  # mkfs.ext4 needs room for its journal and tables

# The helper's program (POSIX sh, run as root in a container without capabilities).
HELPER = r"""
set -eu
action="$1"
attached() { losetup -j "$1" | cut -d: -f1; }
case "$action" in
ensure)
  f="/images/$2.ext4"; size="$3"
  if [ ! -e "$f" ]; then
    rm -f "$f.new"
    truncate -s "$size" "$f.new"
    if [ -d /old ]; then
      mkfs.ext4 -q -F -m 0 -E root_owner=1000:1000 -d /old "$f.new"
    else
      mkfs.ext4 -q -F -m 0 -E root_owner=1000:1000 "$f.new"
    fi
    mv "$f.new" "$f"
  fi
  dev=$(attached "$f" | head -n 1)
  if [ -z "$dev" ]; then
    if [ "$(stat -c %s "$f")" -lt "$size" ]; then
      e2fsck -fp "$f" >/dev/null || [ $? -le 1 ]
      truncate -s "$size" "$f"
      resize2fs "$f" >/dev/null 2>&1
    fi
    dev=$(losetup -f --show "$f")
  fi
  echo "$dev"
  ;;
detach)
  for d in $(attached "/images/$2.ext4"); do losetup -d "$d"; done
  ;;
detach-all)
  for f in /images/*.ext4; do
    [ -e "$f" ] || continue
    for d in $(attached "$f"); do losetup -d "$d"; done
  done
  ;;
*) echo "unknown action $action" >&2; exit 2 ;;
esac
"""


def parse_size(text: str | int) -> int:
    """``512M``, ``10G``, ``1T`` (powers of 1024) or a byte count -> bytes."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([1-9][0-9]*)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
        if not m:
            raise ValueError(f"not a size: {text!r} (use e.g. 512M or 10G)")
        value = int(m.group(1)) * UNITS.get(m.group(2).upper(), 1)
    if value < MIN_SIZE:
        raise ValueError(f"a home must be at least {MIN_SIZE // 1024**2}M, got {text!r}")
    return value


@dataclass
class HomeSettings:
    stack: str
    helper_image: str  # an image with sh, losetup, mkfs.ext4, e2fsck, resize2fs (the hub's)
    default_size: str = "10G"  # when a grant names no `resources.disk`

    @property
    def images_volume(self) -> str:
        return f"{self.stack}-home-images"


class HomeVolumes:
    """Create, attach and release the size-capped home volumes of one stack."""

    def __init__(self, client: docker.DockerClient, settings: HomeSettings) -> None:
        self.client = client
        self.settings = settings

    def volume_name(self, user_key: str) -> str:
        """The name DockerSpawner mounts (``c.DockerSpawner.volumes``)."""
        return f"{self.settings.stack}-home-{user_key}"

    def _helper(self, *args: str, old_volume: str | None = None) -> str:
        self.client.volumes.create(
            self.settings.images_volume,
            labels={LABEL_STACK: self.settings.stack, LABEL_KIND: "home-images"},
        )
        volumes = {
            self.settings.images_volume: {"bind": "/images", "mode": "rw"},
            "/dev": {"bind": "/dev", "mode": "ro"},  # loop nodes appear here as they are made
        }
        if old_volume:
            volumes[old_volume] = {"bind": "/old", "mode": "ro"}
        try:
            out = self.client.containers.run(
                self.settings.helper_image, ["sh", "-c", HELPER, "sandbox-home", *args],
                entrypoint=[], user="0:0", remove=True, network_mode="none",
                cap_drop=["ALL"], security_opt=["no-new-privileges"], read_only=True,
                # only the loop devices (block major 7) and /dev/loop-control (char 10:237)
                device_cgroup_rules=["b 7:* rw", "c 10:237 rw"],
                volumes=volumes, mem_limit="256m", pids_limit=64,
                labels={LABEL_STACK: self.settings.stack, LABEL_KIND: "home-helper"},
            )
        except ContainerError as exc:
            err = (exc.stderr or b"").decode(errors="replace").strip()
            raise RuntimeError(f"home helper {args[0]} failed: {err or exc}") from exc
        return (out or b"").decode().strip()

    def ensure(self, user_key: str, user: str, size: str | int | None) -> str:
        """Attach the user's image (creating or growing it) and point the volume at it."""
        size_b = parse_size(size or self.settings.default_size)
        name = self.volume_name(user_key)
        try:
            existing = self.client.volumes.get(name)
            options = existing.attrs.get("Options") or {}
        except NotFound:
            existing, options = None, {}
        plain = existing is not None and not options.get("device")
        out = self._helper("ensure", user_key, str(size_b), old_volume=name if plain else None)
        device = out.splitlines()[-1] if out else ""
        if not re.fullmatch(r"/dev/loop[0-9]+", device):
            raise RuntimeError(f"home helper returned no loop device: {out!r}")
        if existing is not None:
            if options.get("device") == device and options.get("type") == "ext4":
                return name
            existing.remove()  # a plain volume (migrated above) or a stale device number
            if plain:
                log.info("moved %s's plain home volume into its capped image", user)
        self.client.volumes.create(
            name, driver="local",
            driver_opts={"type": "ext4", "device": device, "o": "nodev,nosuid"},
            labels={LABEL_STACK: self.settings.stack, LABEL_KIND: "home", LABEL_USER: user},
        )
        log.info("home of %s: %s on %s, cap %d bytes", user, name, device, size_b)
        return name

    def release(self, user_key: str) -> None:
        """After the server stopped: drop the mount recipe and detach the loop device."""
        try:
            self.client.volumes.get(self.volume_name(user_key)).remove()
        except NotFound:
            pass
        except APIError as exc:  # still in use by some container: leave everything attached
            log.warning("home of %s still in use, not released: %s", user_key, exc)
            return
        self._helper("detach", user_key)

    def detach_all(self) -> None:
        """Detach every loop device of this stack's images (teardown)."""
        self._helper("detach-all")

    @staticmethod
    def helper_image_of(container: Any) -> str:
        """The image id a running container was created from (the hub's own)."""
        return str(container.attrs.get("Image") or container.image.id)
