"""Table of the products and service capabilities operators declare per grant (rows only; rules in
``sandbox.offerings``)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass

from sandbox.state.db import register_schema

register_schema(
    """
    CREATE TABLE IF NOT EXISTS offerings (
        id INTEGER PRIMARY KEY,
        grant_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        price TEXT,
        free_to_public INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        submitted_by TEXT NOT NULL,
        submitted_at TEXT NOT NULL,
        reviewed_by TEXT,
        reviewed_at TEXT,
        review_comment TEXT
    );
    CREATE INDEX IF NOT EXISTS offerings_by_grant ON offerings(grant_id, status);
    CREATE TABLE IF NOT EXISTS grant_notices (
        id INTEGER PRIMARY KEY,
        grant_id TEXT NOT NULL,
        status TEXT NOT NULL,
        text TEXT NOT NULL,
        actor TEXT NOT NULL,
        ts TEXT NOT NULL
    )
    """
)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def insert(conn: sqlite3.Connection, row: dict) -> int:
    cols = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    cur = conn.execute(f"INSERT INTO offerings ({cols}) VALUES ({marks})", tuple(row.values()))
    return int(cur.lastrowid or 0)


def get(conn: sqlite3.Connection, offering_id: int) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM offerings WHERE id = ?", (offering_id,)).fetchone()


def update(conn: sqlite3.Connection, offering_id: int, **fields: object) -> None:
    sets = ", ".join(f"{k} = ?" for k in fields)
    conn.execute(f"UPDATE offerings SET {sets} WHERE id = ?", (*fields.values(), offering_id))


def listing(conn: sqlite3.Connection, *, grant_id: str | None = None,
            statuses: tuple[str, ...] | None = None) -> list[dict]:
    sql, params = "SELECT * FROM offerings WHERE 1 = 1", list[object]()
    if grant_id:
        sql += " AND grant_id = ?"
        params.append(grant_id)
    if statuses:
        sql += f" AND status IN ({', '.join('?' for _ in statuses)})"
        params.extend(statuses)
    return [dict(r) for r in conn.execute(sql + " ORDER BY id", params)]


def add_notice(conn: sqlite3.Connection, grant_id: str, status: str, text: str, actor: str) -> None:
    conn.execute("INSERT INTO grant_notices (grant_id, status, text, actor, ts) VALUES (?, ?, ?, ?, ?)",
                 (grant_id, status, text, actor, dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")))


def latest_notice(conn: sqlite3.Connection, grant_id: str, status: str) -> dict | None:
    row = conn.execute("SELECT * FROM grant_notices WHERE grant_id = ? AND status = ? ORDER BY id DESC LIMIT 1",
                       (grant_id, status)).fetchone()
    return dict(row) if row else None


@dataclass(frozen=True)
class ProductPrice:
    id: int
    price: str | None
    free_to_public: bool


def product_prices(conn: sqlite3.Connection, grant_id: str) -> list[ProductPrice]:
    """The price terms of every product a grant declared (billing: which declarations are priced)."""
    rows = conn.execute("SELECT id, price, free_to_public FROM offerings WHERE grant_id = ? AND kind = 'product'",
                        (grant_id,)).fetchall()
    return [ProductPrice(int(r["id"]), r["price"], bool(r["free_to_public"])) for r in rows]
