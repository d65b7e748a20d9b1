"""Hub-side helpers of the sandbox stack (loaded by hub_config.py inside the hub image).

- :mod:`sandbox_hub.networks`: one internal Docker network per notebook user, to which only
  the gateway and the hub are attached (no notebook can reach another one).
- :mod:`sandbox_hub.homes`: per-user home volumes with a hard size cap (an ext4 image file
  per user, attached to a loop device by a short-lived helper container).

Standalone on purpose: the hub image has docker-py but not the ``sandbox`` package.
"""
