"""The gateway's parts wired together once per process: state, stores, engine, settings."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.engine_spark import SparkOptions
from sandbox.engines import PerDatasetEngine
from sandbox.errors import SandboxError
from sandbox.oversight import OversightSettings
from sandbox.state.audit import AuditEvent, AuditLog
from sandbox.state.checkpoints import Checkpoints
from sandbox.state.db import StateDB
from sandbox.state.grants_store import PolicyStore
from sandbox.state.keys import MacKeyring, SigningKey
from sandbox.state.ledger import Ledger
from sandbox.state.sessions import SessionLog
from sandbox.state.tokens import TokenStore

log = logging.getLogger("sandbox.services")
ENGINE_ACTOR = "gateway:engine"  # the actor of the engine's own audit events (refreshes)


@dataclass
class Settings:
    """Every setting has a default and help text (see ``sandbox serve --help``)."""

    state_dir: Path
    data_root: Path
    max_sql_chars: int = 8_000  # longer SQL is refused before parsing
    max_body_bytes: int = 64_000  # JSON bodies of the query API
    max_upload_bytes: int = 20_000_000  # a whole export request
    engine_threads: int = 2
    # DuckDB memory limit while serving queries: with the rest of the process (about 200 MB) and DuckDB's own
    # overshoot this keeps the gateway under 1 GB at 100M rows (a COUNT(DISTINCT unit) over them filled a
    # 1GB limit: 1.3 GB in all; 700MB: 1.0 GB)
    engine_memory: str = "600MB"
    engine_build_memory: str = "4GB"  # the import child process (contribution bound); spills beyond
    # datasets with `engine: spark`: the Spark master (local mode by default; a cluster's URL otherwise,
    # whose executors see the data root and the state's engine directory at the same paths)
    spark_master: str = field(default_factory=lambda: os.environ.get("SANDBOX_SPARK_MASTER", "local[2]"))
    spark_driver_memory: str = field(default_factory=lambda: os.environ.get("SANDBOX_SPARK_DRIVER_MEMORY", "2g"))
    internal_token: str | None = None  # shared secret for the hub's spawn check
    keys_dir: Path | None = None  # audit MAC keyring, signing key, admin token; default: `keys` beside state_dir
    audit_key_file: Path | None = None  # the current audit MAC key; default: <keys_dir>/audit-mac.key
    signing_key_file: Path | None = None  # Ed25519 checkpoint key; default: <keys_dir>/checkpoint-signing.pem
    audit_mark_file: Path | None = None  # writable audit high-water mark; default: <keys_dir>/audit-mark.json
    create_keys: bool = True  # create missing default keys on first use (off for read-only verification)
    checkpoint_interval_s: float = 300.0  # `sandbox serve` signs a checkpoint this often (and on grant changes)
    today: Callable[[], dt.date] = field(default=lambda: dt.datetime.now(dt.UTC).date())
    # directory, cases and monitoring; each field's help is in sandbox.oversight.HELP
    oversight: OversightSettings = field(default_factory=OversightSettings)


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        keyring = MacKeyring.for_state(settings.state_dir, settings.keys_dir, settings.audit_key_file,
                                       create=settings.create_keys, mark_file=settings.audit_mark_file)
        self.db = StateDB(settings.state_dir, keyring)
        self.audit = AuditLog(self.db)
        signing = SigningKey.for_state(settings.state_dir, settings.keys_dir, settings.signing_key_file,
                                       create=settings.create_keys)
        self.checkpoints = Checkpoints(self.db, self.audit, signing)
        self.policies = PolicyStore(self.db, self.audit, on_grant_change=self._checkpoint_grant_change)
        self.ledger = Ledger(self.db, self.audit, backfill=settings.create_keys)  # off: read-only verification
        self.tokens = TokenStore(self.db)
        self.sessions = SessionLog(self.db)
        engine_dir = settings.state_dir / "engine"
        self.engine = PerDatasetEngine(
            settings.data_root,
            engine_dir,
            threads=settings.engine_threads,
            memory_limit=settings.engine_memory,
            build_memory=settings.engine_build_memory,
            on_event=self._engine_event,
            catalog=self.policies.datasets,
            spark=SparkOptions(master=settings.spark_master, driver_memory=settings.spark_driver_memory,
                               local_dir=engine_dir / "spark" / "local"),
        )

    def _engine_event(self, action: str, detail: dict) -> None:
        """The engine's catalog changes, swaps and failed builds, in the audit log."""
        self.audit.record(AuditEvent(ENGINE_ACTOR, action, None, detail))

    def _checkpoint_grant_change(self, grant_id: str) -> None:
        """Every grant change is followed by a signed checkpoint; the change itself is already committed."""
        try:
            self.checkpoints.sign("grant_change")
        except SandboxError as exc:
            log.warning("grant %s changed but no checkpoint was signed: %s", grant_id, exc.message)

    def today(self) -> dt.date:
        return self.settings.today()
