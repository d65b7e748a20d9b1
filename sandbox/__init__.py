"""Trusted-circulation sandbox for public data.

Inside a notebook, ``import sandbox; db = sandbox.connect()`` gives the gateway client.
The rest of the package (policy models, SQL analysis, DP planning, ledger, audit) runs in
the gateway; it is imported lazily so that the notebook image needs only the client.
"""

from __future__ import annotations

__version__ = "0.1.0"


def connect(*args, **kwargs):  # noqa: ANN002, ANN003 - thin re-export
    """Connect to the gateway from inside a sandbox (see :mod:`sandbox.client`)."""
    from sandbox.client import connect as _connect

    return _connect(*args, **kwargs)
