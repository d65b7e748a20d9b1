"""The gateway's parts wired together once per process: state, stores, engine, settings."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.engine import Engine
from sandbox.oversight import OversightSettings
from sandbox.state.audit import AuditLog
from sandbox.state.db import StateDB
from sandbox.state.grants_store import PolicyStore
from sandbox.state.ledger import Ledger
from sandbox.state.sessions import SessionLog
from sandbox.state.tokens import TokenStore


@dataclass
class Settings:
    """Every setting has a default and help text (see ``sandbox serve --help``)."""

    state_dir: Path
    data_root: Path
    max_sql_chars: int = 8_000  # longer SQL is refused before parsing
    max_body_bytes: int = 64_000  # JSON bodies of the query API
    max_upload_bytes: int = 20_000_000  # a whole export request
    engine_threads: int = 2
    engine_memory: str = "1GB"  # DuckDB memory limit while serving queries
    engine_build_memory: str = "4GB"  # the import child process (contribution bound); spills beyond
    internal_token: str | None = None  # shared secret for the hub's spawn check
    today: Callable[[], dt.date] = field(default=lambda: dt.datetime.now(dt.UTC).date())
    # directory, cases and monitoring; each field's help is in sandbox.oversight.HELP
    oversight: OversightSettings = field(default_factory=OversightSettings)


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = StateDB(settings.state_dir)
        self.audit = AuditLog(self.db)
        self.policies = PolicyStore(self.db, self.audit)
        self.ledger = Ledger(self.db, self.audit)
        self.tokens = TokenStore(self.db)
        self.sessions = SessionLog(self.db, self.audit)
        self.engine = Engine(
            settings.data_root,
            settings.state_dir / "engine",
            threads=settings.engine_threads,
            memory_limit=settings.engine_memory,
            build_memory=settings.engine_build_memory,
        )

    def today(self) -> dt.date:
        return self.settings.today()
