"""What the monitoring rules read: audit entries, budgets and charges (sandbox.monitoring).

Each function takes the connection of the caller's unit of work (the scan reads and raises its
alerts in one transaction) and returns plain values or :class:`~sandbox.state.audit.Entry`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from sandbox.state.audit import Entry, entry_of


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values)


def last_seq(conn: sqlite3.Connection) -> int:
    """The newest sequence number of the audit log (0 when it is empty)."""
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) AS s FROM audit").fetchone()["s"])


def entries_after(conn: sqlite3.Connection, seq: int, limit: int, *, skip_actor: str) -> list[Entry]:
    """Up to ``limit`` entries after ``seq``, oldest first, except those ``skip_actor`` wrote."""
    rows = conn.execute("SELECT * FROM audit WHERE seq > ? AND actor != ? ORDER BY seq LIMIT ?",
                        (seq, skip_actor, limit)).fetchall()
    return [entry_of(r) for r in rows]


def count_actor_actions(conn: sqlite3.Connection, actions: Sequence[str], actor: str, since: str, upto: int) -> int:
    """Entries of ``actions`` by ``actor`` at or after ``since``, up to sequence number ``upto``."""
    return int(conn.execute(
        f"SELECT COUNT(*) AS n FROM audit WHERE action IN ({_marks(actions)}) AND actor = ? AND ts >= ? AND seq <= ?",
        (*actions, actor, since, upto)).fetchone()["n"])


def count_actor_codes(conn: sqlite3.Connection, actions: Sequence[str], actor: str, grant_id: str | None,
                      since: str, upto: int, codes: Sequence[str]) -> int:
    """As :func:`count_actor_actions`, under one grant (or none), for entries whose detail's code is in ``codes``."""
    return int(conn.execute(
        f"SELECT COUNT(*) AS n FROM audit WHERE action IN ({_marks(actions)}) AND actor = ? AND grant_id IS ?"
        f" AND ts >= ? AND seq <= ? AND json_extract(detail, '$.code') IN ({_marks(codes)})",
        (*actions, actor, grant_id, since, upto, *codes)).fetchone()["n"])


def bad_tokens_presented(conn: sqlite3.Connection, since: str, upto: int) -> int:
    """Bad credentials presented since ``since``: aggregated entries carry a count; older ones counted
    one each, plus what they carried over."""
    return int(conn.execute(
        "SELECT COALESCE(SUM(COALESCE(json_extract(detail, '$.count'), 1)"
        " + COALESCE(json_extract(detail, '$.not_recorded_before'), 0)), 0) AS n FROM audit"
        " WHERE action = 'auth.bad_token' AND ts >= ? AND seq <= ?", (since, upto)).fetchone()["n"])


def submitted_details(conn: sqlite3.Connection, grant_id: str, since: str, upto: int) -> list[dict[str, Any]]:
    """The details of a grant's ``export.submitted`` entries since ``since``, up to ``upto``."""
    rows = conn.execute("SELECT detail FROM audit WHERE action = 'export.submitted' AND grant_id = ? AND ts >= ?"
                        " AND seq <= ?", (grant_id, since, upto)).fetchall()
    return [json.loads(r["detail"]) for r in rows]


def budget_total_nano(conn: sqlite3.Connection, grant_id: str) -> int | None:
    """A grant's whole budget in nano-epsilon (None without a budget row)."""
    row = conn.execute("SELECT epsilon_total_nano FROM budgets WHERE grant_id = ?", (grant_id,)).fetchone()
    return None if row is None else int(row["epsilon_total_nano"])


def spent_since_nano(conn: sqlite3.Connection, grant_id: str, since: str) -> int:
    """What a grant's charges since ``since`` add up to, in nano-epsilon."""
    return int(conn.execute("SELECT COALESCE(SUM(epsilon_nano), 0) AS s FROM charges WHERE grant_id = ? AND ts >= ?",
                            (grant_id, since)).fetchone()["s"])


def file_checks(conn: sqlite3.Connection, request_id: str) -> list[list[dict[str, Any]]]:
    """The automatic check results of every file (current or replaced) of an export request;
    raises sqlite3.Error when the exports tables do not exist."""
    rows = conn.execute("SELECT checks FROM export_files WHERE request_id = ?", (request_id,)).fetchall()
    return [json.loads(r["checks"]) for r in rows]
