"""One helper for writing a file atomically: temp file beside it, fsync, rename."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def atomic_write(target: Path, data: bytes, mode: int = 0o600, *, exclusive: bool = False,
                 dir_mode: int = 0o700) -> bool:
    """Write ``data`` to ``target`` so that readers see either the old file or the whole new one.

    With ``exclusive`` an existing ``target`` is left alone and False is returned (used for keys
    and content-addressed blobs, which are never overwritten). Raises OSError.
    """
    target.parent.mkdir(mode=dir_mode, parents=True, exist_ok=True)
    if exclusive and target.exists():
        return False
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            try:
                os.link(tmp, target)  # fails if another process created it first
            except FileExistsError:
                return False
        else:
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return True
