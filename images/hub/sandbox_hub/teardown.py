"""Remove what the hub created for a stack: ``python3 -m sandbox_hub.teardown STACK [--volumes]``.

Run by ``scripts/stack down`` after ``docker compose down`` (in the hub image, with the
Docker socket): the per-user notebook networks left behind, the home volumes (mount
recipes only: the data is in the home images), and the home images' loop devices. With
``--volumes`` (``scripts/stack down -v``) the home images themselves are deleted too.
"""

from __future__ import annotations

import argparse
import contextlib

import docker
from docker.errors import APIError, NotFound

from sandbox_hub.homes import LABEL_KIND, LABEL_STACK, HomeSettings, HomeVolumes


def teardown(client: docker.DockerClient, stack: str, helper_image: str, volumes: bool) -> list[str]:
    """Everything of ``stack`` labelled by the hub, removed; returns what was removed."""
    done: list[str] = []
    label = f"{LABEL_STACK}={stack}"
    for c in client.containers.list(all=True, filters={"label": label}):  # stray helpers
        with contextlib.suppress(APIError):
            c.remove(force=True)
            done.append(f"container {c.name}")
    for net in client.networks.list(filters={"label": label}):
        net.reload()
        for cid in net.attrs.get("Containers") or {}:
            with contextlib.suppress(APIError):
                net.disconnect(cid, force=True)
        with contextlib.suppress(APIError):
            net.remove()
            done.append(f"network {net.name}")
    for vol in client.volumes.list(filters={"label": [label, f"{LABEL_KIND}=home"]}):
        with contextlib.suppress(APIError):
            vol.remove()
            done.append(f"volume {vol.name}")
    homes = HomeVolumes(client, HomeSettings(stack=stack, helper_image=helper_image))
    try:
        client.volumes.get(homes.settings.images_volume)
    except NotFound:
        return done
    homes.detach_all()
    done.append("loop devices detached")
    if volumes:
        client.volumes.get(homes.settings.images_volume).remove()
        done.append(f"volume {homes.settings.images_volume}")
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stack", help="the stack name (SANDBOX_STACK)")
    ap.add_argument("--volumes", action="store_true", help="also delete the home images (all home data)")
    ap.add_argument("--helper-image", default="trusted-sandbox/hub:latest",
                    help="image with sh, losetup and mkfs.ext4 (default: the hub image)")
    args = ap.parse_args()
    for line in teardown(docker.from_env(), args.stack, args.helper_image, args.volumes):
        print(f"stack: removed {line}")


if __name__ == "__main__":
    main()
