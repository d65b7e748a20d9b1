"""The contribution bound depends only on each unit's own rows (real Parquet, real engine builds)."""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sandbox.bounding import hmac_sql, load_or_create_key
from sandbox.engine import build
from sandbox.policy.models import Dataset

K = 3


def _dataset(source: str = "panel.parquet") -> Dataset:
    return Dataset.model_validate({
        "id": "panel", "title": "panel", "source": source, "classification": "L2",
        "privacy_unit": "pid", "max_rows_per_unit": K,
        "columns": {
            "pid": {"type": "id"},
            "tag": {"type": "int", "bounds": [0, 1_000_000]},  # unique per row: identifies kept rows
            "year": {"type": "category", "values": ["2019", "2020", "2021", "2022"]},
        },
    })


def _panel(seed: int = 7, persons: int = 400) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for p in range(persons):
        for _ in range(rnd.randint(1, 9)):  # about two thirds of the units are over the bound
            rows.append({"pid": f"p{p:05d}", "tag": len(rows), "year": rnd.choice(["2019", "2020", "2021", "2022"])})
    rnd.shuffle(rows)  # units interleaved, as in a real file
    return rows


def _write(path: Path, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=97)


def _kept_tags(root: Path, name: str, key: bytes, tmp: Path) -> set[int]:
    target = tmp / f"{name}.duckdb"
    build({"panel": _dataset(name)}, root, target, key=key)
    con = duckdb.connect(str(target), read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT tag FROM panel").fetchall()}
    finally:
        con.close()


def test_neighbour_removing_one_over_bound_unit_changes_only_its_rows(tmp_path: Path) -> None:
    rows = _panel()
    by_unit: dict[str, list[int]] = {}
    for r in rows:
        by_unit.setdefault(r["pid"], []).append(r["tag"])
    # the over-bound unit that appears first in the file: under the old position-keyed rule,
    # removing it shifted every later row's position and so other units' kept rows
    victim = next(r["pid"] for r in rows if len(by_unit[r["pid"]]) > K)
    _write(tmp_path / "d.parquet", rows)
    _write(tmp_path / "d_minus.parquet", [r for r in rows if r["pid"] != victim])
    key = secrets.token_bytes(32)
    full = _kept_tags(tmp_path, "d.parquet", key, tmp_path)
    minus = _kept_tags(tmp_path, "d_minus.parquet", key, tmp_path)
    assert minus <= full
    removed = full - minus
    assert len(removed) == K and removed <= set(by_unit[victim])
    # and the bound itself: every unit keeps min(n, K) of its own rows
    for unit, tags in by_unit.items():
        assert len(full & set(tags)) == min(len(tags), K), unit


def test_file_order_does_not_change_which_rows_are_kept(tmp_path: Path) -> None:
    rows = _panel(seed=11, persons=150)
    _write(tmp_path / "a.parquet", rows)
    _write(tmp_path / "b.parquet", list(reversed(rows)))
    key = secrets.token_bytes(32)
    assert _kept_tags(tmp_path, "a.parquet", key, tmp_path) == _kept_tags(tmp_path, "b.parquet", key, tmp_path)


def test_the_choice_is_keyed(tmp_path: Path) -> None:
    """Another key keeps other rows: without the key the choice cannot be predicted."""
    _write(tmp_path / "d.parquet", _panel(seed=3, persons=150))
    a = _kept_tags(tmp_path, "d.parquet", secrets.token_bytes(32), tmp_path)
    b = _kept_tags(tmp_path, "d.parquet", secrets.token_bytes(32), tmp_path)
    assert len(a) == len(b) and a != b


def test_identical_rows_of_one_unit_tie_harmlessly(tmp_path: Path) -> None:
    rows = [{"pid": "p1", "tag": 5, "year": "2020"}] * 6 + [{"pid": "p2", "tag": 9, "year": "2021"}] * 2
    _write(tmp_path / "d.parquet", rows)
    target = tmp_path / "t.duckdb"
    build({"panel": _dataset("d.parquet")}, tmp_path, target, key=secrets.token_bytes(32))
    con = duckdb.connect(str(target), read_only=True)
    got = sorted(con.execute("SELECT tag, year FROM panel").fetchall())
    con.close()
    assert got == [(5, "2020")] * K + [(9, "2021")] * 2


def test_the_sql_prf_is_hmac_sha256() -> None:
    key = secrets.token_bytes(32)
    con = duckdb.connect()
    for msg in ["", "a", '{"u":"p00001","c0":3,"c1":"2020"}', "ü" * 200]:
        got = con.execute(f"SELECT {hmac_sql(key, '?')}", [msg]).fetchone()[0]
        assert got == hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def test_the_key_stays_out_of_the_engine_file(tmp_path: Path) -> None:
    _write(tmp_path / "d.parquet", _panel(seed=5, persons=50))
    key = load_or_create_key(tmp_path / "state" / "bounding.key")
    assert load_or_create_key(tmp_path / "state" / "bounding.key") == key
    assert (tmp_path / "state" / "bounding.key").stat().st_mode & 0o077 == 0
    target = tmp_path / "t.duckdb"
    build({"panel": _dataset("d.parquet")}, tmp_path, target, key=key)
    blob = target.read_bytes()
    assert key not in blob and key.hex().encode() not in blob
    assert bytes(b ^ 0x36 for b in key.ljust(64, b"\0")) not in blob


def test_a_short_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bounding.key").write_bytes(b"short")
    with pytest.raises(Exception, match="32 bytes"):
        load_or_create_key(tmp_path / "bounding.key")


def test_neighbour_moves_count_by_year_by_at_most_the_bound(tmp_path: Path) -> None:
    """The issue's measurement: removing one person moved COUNT(*) GROUP BY year by ~200 rows (L1)."""
    rows = _panel(seed=19, persons=600)
    by_unit: dict[str, int] = {}
    for r in rows:
        by_unit[r["pid"]] = by_unit.get(r["pid"], 0) + 1
    victim = next(r["pid"] for r in rows if by_unit[r["pid"]] > K)
    _write(tmp_path / "d.parquet", rows)
    _write(tmp_path / "d_minus.parquet", [r for r in rows if r["pid"] != victim])
    key = secrets.token_bytes(32)
    counts = []
    for name in ("d.parquet", "d_minus.parquet"):
        target = tmp_path / f"{name}.duckdb"
        build({"panel": _dataset(name)}, tmp_path, target, key=key)
        con = duckdb.connect(str(target), read_only=True)
        counts.append(dict(con.execute("SELECT year, COUNT(*) FROM panel GROUP BY year").fetchall()))
        con.close()
    l1 = sum(abs(counts[0].get(y, 0) - counts[1].get(y, 0)) for y in set(counts[0]) | set(counts[1]))
    assert l1 == K  # exactly the victim's kept rows, nobody else's


def _engine_rows(root: Path, name: str, key: bytes, tmp: Path) -> dict[int, tuple]:
    target = tmp / f"{name}.duckdb"
    build({"panel": _dataset(name)}, root, target, key=key)
    con = duckdb.connect(str(target), read_only=True)
    try:
        return {r[0]: r[1:] for r in con.execute(
            'SELECT tag, "__unit_first", "__unit", "__row" FROM panel').fetchall()}
    finally:
        con.close()


def test_internal_columns_are_keyed_and_depend_on_the_unit_alone(tmp_path: Path) -> None:
    """``__unit`` is HMAC-SHA256(key, 'unit:' id) (never DuckDB's unkeyed hash), one representative
    per unit; the neighbour without one unit changes no other unit's internal columns either."""
    rows = _panel()
    _write(tmp_path / "panel.parquet", rows)
    key = secrets.token_bytes(32)
    engine = _engine_rows(tmp_path, "panel.parquet", key, tmp_path)
    pid_of = {r["tag"]: r["pid"] for r in rows}
    for tag, (_, unit, _) in engine.items():
        mac = hmac.new(key, f"unit:{pid_of[tag]}".encode(), hashlib.sha256).hexdigest()
        assert unit == int(mac[:16], 16)
    firsts: dict[str, int] = {}
    for tag, (first, _, _) in engine.items():
        firsts[pid_of[tag]] = firsts.get(pid_of[tag], 0) + int(first)
    assert set(firsts.values()) == {1}  # each unit exactly one representative row
    (tmp_path / "k2").mkdir()
    other = _engine_rows(tmp_path, "panel.parquet", secrets.token_bytes(32), tmp_path / "k2")
    assert {u for _, u, _ in engine.values()}.isdisjoint({u for _, u, _ in other.values()})  # keyed
    gone = next(r["pid"] for r in rows if sum(x["pid"] == r["pid"] for x in rows) > K)
    _write(tmp_path / "minus.parquet", [r for r in rows if r["pid"] != gone])
    minus = _engine_rows(tmp_path, "minus.parquet", key, tmp_path)
    assert {t: v for t, v in engine.items() if pid_of[t] != gone} == minus


def test_undeclared_columns_named_like_internal_ones_shadow_nothing(tmp_path: Path) -> None:
    """An attacker-supplied Parquet column named ``__n``, ``__unit``, ``__row`` or ``__unit_first``
    is never read: the build refuses such a file (reserved names, below), and even past that check
    the bounding SQL gives the same rows, internal columns included, as without those columns."""
    from sandbox.bounding import bounded_rows_sql

    rows = _panel(persons=60)
    _write(tmp_path / "panel.parquet", rows)
    hostile = [{**r, "__n": 1, "__unit": 7, "__row": 0, "__unit_first": True} for r in rows]
    _write(tmp_path / "hostile.parquet", hostile)
    key = secrets.token_bytes(32)

    def bounded(name: str) -> list[tuple]:
        return sorted(duckdb.sql(bounded_rows_sql(_dataset(name), tmp_path / name, key)).fetchall())

    assert bounded("hostile.parquet") == bounded("panel.parquet")


@pytest.mark.parametrize("extra", ["__n", "__v_tag", "rowid", "file_row_number"])
def test_an_undeclared_reserved_column_in_the_file_is_refused(tmp_path: Path, extra: str) -> None:
    """A file's own ``__n`` would shadow the window count and keep every row: the build refuses
    any file whose schema holds a reserved name or a name starting with ``__``."""
    from sandbox.catalog_check import check_dataset_against_parquet
    from sandbox.engine import EngineError

    rows = [{"pid": "a", "tag": i, "year": "2020", extra: 0} for i in range(5)]
    rows += [{"pid": "b", "tag": 10 + i, "year": "2021", extra: 0} for i in range(4)]
    _write(tmp_path / "panel.parquet", rows)
    problems = check_dataset_against_parquet(_dataset(), tmp_path)
    assert any(extra in p and "reserved" in p for p in problems)
    with pytest.raises(EngineError) as exc:
        build({"panel": _dataset()}, tmp_path, tmp_path / "t.duckdb", key=secrets.token_bytes(32))
    assert exc.value.code == "reserved_column" and extra in exc.value.message


def test_the_bound_reads_only_declared_columns(tmp_path: Path) -> None:
    """Even past the schema check, the inner query projects the declared columns, never ``*``."""
    from sandbox.bounding import bounded_rows_sql

    sql = bounded_rows_sql(_dataset(), tmp_path / "panel.parquet", secrets.token_bytes(32))
    assert "*," not in sql and "SELECT *" not in sql
    rows = [{"pid": "a", "tag": i, "year": "2020", "__n": 0} for i in range(5)]
    _write(tmp_path / "panel.parquet", rows)
    con = duckdb.connect()
    assert con.execute(f"SELECT COUNT(*) FROM ({sql})").fetchone()[0] == K
