"""The narrow dependencies of the airlock, the usage metering and the public register, taken from
the wired :class:`~sandbox.services.Services`.

Those modules declare what they use (:class:`sandbox.exports.deps.ExportDeps`,
:class:`sandbox.usage.UsageSources`, single stores) and never see the whole ``Services``; the
gateway, the CLI and the tests hold one ``Services`` and hand each its parts through here.
"""

from __future__ import annotations

from sandbox.exports.deps import UploadDeps
from sandbox.services import Services
from sandbox.usage import UsageSources


def export_deps(services: Services) -> UploadDeps:
    """Everything the airlock uses (an :class:`~sandbox.exports.deps.ExportDeps` where less is needed)."""
    return UploadDeps(db=services.db, audit=services.audit, policies=services.policies, today=services.today,
                      ledger=services.ledger, engine=services.engine)


def usage_sources(services: Services) -> UsageSources:
    return UsageSources(db=services.db, audit=services.audit, policies=services.policies, ledger=services.ledger,
                        sessions=services.sessions)
