"""What the airlock uses of the wired gateway, named: the functions of :mod:`sandbox.exports` take
these (or single stores) instead of the whole ``Services``, so a signature shows its dependencies.

Built from ``Services`` by :func:`sandbox.wiring.export_deps`; the gateway's blueprints, the CLI and
the tests pass them in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandbox.engine import Engine
    from sandbox.state.audit import AuditLog
    from sandbox.state.db import StateDB
    from sandbox.state.grants_store import PolicyStore
    from sandbox.state.ledger import Ledger


@dataclass(frozen=True)
class ExportDeps:
    """The workflow's stores: the state database (requests, files, reviews, events and the blobs
    beside it), the audit log every transition appends to, the policies (roles, grants) and today's
    date (whether a grant may still be used)."""

    db: StateDB
    audit: AuditLog
    policies: PolicyStore
    today: Callable[[], dt.date]


@dataclass(frozen=True)
class UploadDeps(ExportDeps):
    """:class:`ExportDeps` and what an upload's checks read besides: the released noisy answers in
    the ledger and the engine's identifier matcher."""

    ledger: Ledger
    engine: Engine
