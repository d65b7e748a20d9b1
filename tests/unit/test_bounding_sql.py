"""The contribution bound's SQL: syntax trees with golden renderings, checked against the documented
rule computed in Python, and the partitioned build (issue 13) checked to keep it exactly.

Goldens live in ``tests/unit/golden/bounding_*.sql`` (the key's pads shown as ``<ipad>``/``<opad>``);
``SANDBOX_UPDATE_GOLDEN=1`` rewrites them after an intended change (review the diff).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import random
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot
from sqlglot import exp

from sandbox import bounding
from sandbox.engine import ID_TABLE_PREFIX, build, derive_ids_key
from sandbox.engine_build import duckdb_memory, memory_bytes, pass_rows_for, redact
from sandbox.policy.models import Dataset

GOLDEN = Path(__file__).parent / "golden"
KEY = bytes(range(32))
K = 2


def _panel_dataset(source: str = "panel.parquet", unit: str = "pid") -> Dataset:
    return Dataset.model_validate({
        "id": "panel", "title": "panel", "source": source, "classification": "L2",
        "privacy_unit": unit, "max_rows_per_unit": K if unit != "row" else 1,
        "columns": {
            **({"pid": {"type": "id"}} if unit == "pid" else {}),
            "grp": {"type": "category", "values": ["a", "b"]},
            "tag": {"type": "int", "bounds": [0, 1_000_000]},  # unique per row: identifies kept rows
            "score": {"type": "float", "bounds": [-1.5, 2.5]},
            "code": {"type": "int"},
        },
    })


def _pads(key: bytes) -> dict[str, str]:
    padded = key.ljust(64, b"\0")
    blob = {name: "CAST('" + "".join(f"\\x{b ^ mask:02X}" for b in padded) + "' AS BLOB)"
            for name, mask in (("ipad", 0x36), ("opad", 0x5C))}
    return {blob["ipad"]: "<ipad>", blob["opad"]: "<opad>"}


def _golden(name: str, node: exp.Expression, key: bytes = KEY) -> None:
    text = bounding.render(node, pretty=True)
    for pad, shown in _pads(key).items():
        assert pad in text or "SHA256" not in text, "the HMAC's pads are derived from the key"
        text = text.replace(pad, shown)
    path = GOLDEN / f"bounding_{name}.sql"
    if os.environ.get("SANDBOX_UPDATE_GOLDEN"):
        path.write_text(text + "\n")
    assert text + "\n" == path.read_text(), f"{path.name} differs: review, then SANDBOX_UPDATE_GOLDEN=1"


def test_golden_bounded_rows_of_a_unit_dataset() -> None:
    _golden("rows_unit", bounding.bounded_rows(_panel_dataset(), Path("/data/panel.parquet"), KEY))


def test_golden_bounded_rows_of_a_row_dataset() -> None:
    _golden("rows_row", bounding.bounded_rows(_panel_dataset(unit="row"), Path("/data/panel.parquet"), KEY))


def test_golden_unit_ids_over_partition_files() -> None:
    files = [Path("/stage/__p=0/data_0.parquet"), Path("/stage/__p=0/data_1.parquet")]
    _golden("unit_ids", bounding.unit_ids(_panel_dataset(), files, derive_ids_key(KEY)), derive_ids_key(KEY))


def test_golden_stage() -> None:
    _golden("stage", bounding.stage(_panel_dataset(), Path("/data/panel.parquet"), Path("/spill/stage/rows"), 7))


def test_paths_and_names_are_literals_and_identifiers_not_spliced_text(tmp_path: Path) -> None:
    """A data root with a quote in its name is read as such: a tree renders it as a literal."""
    root = tmp_path / "o'brien; DROP TABLE x --"
    root.mkdir()
    pq.write_table(pa.Table.from_pylist(_rows(persons=40)), root / "panel.parquet")
    sql = bounding.bounded_rows_sql(_panel_dataset(), root / "panel.parquet", KEY)
    assert isinstance(sqlglot.parse_one(sql, read="duckdb"), exp.Query)  # one statement
    assert duckdb.connect().execute(f"SELECT COUNT(*) FROM ({sql})").fetchone()[0] > 0


def test_the_sql_prf_is_hmac_sha256_over_a_tree() -> None:
    con = duckdb.connect()
    for msg in ["", "unit:p1", '{"u":"p00001","c1":"a"}', "ü" * 100]:
        node = bounding.hmac_expr(KEY, exp.Literal.string(msg))
        assert con.execute(f"SELECT {bounding.render(node)}").fetchone()[0] == hmac.new(
            KEY, msg.encode(), hashlib.sha256).hexdigest()


# -- the documented rule, in Python ------------------------------------------------------------------
def _rows(seed: int = 5, persons: int = 300) -> list[dict]:
    rnd = random.Random(seed)
    rows: list[dict] = []
    for p in range(persons):
        for _ in range(rnd.choice([1, 1, 2, 3, 5, 8])):
            rows.append({"pid": f"p{p:04d}", "grp": rnd.choice("ab"), "tag": len(rows),
                         "score": round(rnd.uniform(-3, 3), 2), "code": rnd.randint(0, 9)})
    rows += [{"pid": None, "grp": "a", "tag": 10**5 + i, "score": 0.0, "code": 1} for i in range(3)]  # no unit
    rnd.shuffle(rows)
    return rows


def _prf64(key: bytes, message: str) -> int:
    return int(hmac.new(key, message.encode(), hashlib.sha256).hexdigest()[:16], 16)


def _reference(rows: list[dict], ds: Dataset, key: bytes) -> dict[int, tuple[bool, int, int]]:
    """tag -> (__unit_first, __unit, __row) of the kept rows, by the rule in sandbox.bounding's docstring."""
    units: dict[str, list[dict]] = {}
    for r in rows:
        if r["pid"] is not None:
            units.setdefault(r["pid"], []).append(r)
    names = list(ds.columns)
    out = {}
    for pid, own in units.items():
        unit_key = _prf64(key, f"unit:{pid.strip()}")
        if len(own) == 1:
            out[own[0]["tag"]] = (True, unit_key, 0)
            continue
        message = {r["tag"]: json.dumps({"u": pid, **{f"c{i}": r[n] for i, n in enumerate(names) if n != "pid"}},
                                        separators=(",", ":")) for r in own}
        ranked = sorted(own, key=lambda r: _prf64(key, message[r["tag"]]))
        for rank, r in enumerate(ranked[:ds.max_rows_per_unit]):
            out[r["tag"]] = (rank == 0, unit_key, _prf64(key, message[r["tag"]]))
    return out


def _built(tmp: Path, name: str, rows: list[dict], pass_rows: int | None, key: bytes = KEY) -> tuple[dict, set]:
    pq.write_table(pa.Table.from_pylist(rows), tmp / name, row_group_size=50)
    target = tmp / f"{name}-{pass_rows}.duckdb"
    build({"panel": _panel_dataset(name)}, tmp, target, key=key, pass_rows=pass_rows)
    con = duckdb.connect(str(target), read_only=True)
    try:
        table = {r[0]: r[1:] for r in con.execute(
            'SELECT tag, "__unit_first", "__unit", "__row" FROM panel').fetchall()}
        ids = {r[0] for r in con.execute(f'SELECT h FROM "{ID_TABLE_PREFIX}panel"').fetchall()}
    finally:
        con.close()
    return table, ids


@pytest.mark.parametrize("pass_rows", [None, 97, 400])
def test_the_build_keeps_exactly_the_rows_the_rule_names(tmp_path: Path, pass_rows: int | None) -> None:
    rows = _rows()
    table, ids = _built(tmp_path, "panel.parquet", rows, pass_rows)
    assert table == _reference(rows, _panel_dataset(), KEY)
    ids_key = derive_ids_key(KEY)
    expected = {hmac.new(ids_key, r["pid"].encode(), hashlib.sha256).hexdigest() for r in rows if r["pid"]}
    assert ids == expected


def test_a_neighbour_that_changes_the_number_of_passes_changes_no_other_unit(tmp_path: Path) -> None:
    """The number of passes grows with the file, i.e. with the other units: it must not matter."""
    rows = _rows(seed=9)
    sizes: dict[str, int] = {}
    for r in rows:
        if r["pid"]:
            sizes[r["pid"]] = sizes.get(r["pid"], 0) + 1
    victim = max(sizes, key=lambda p: sizes[p])
    minus = [r for r in rows if r["pid"] != victim]
    pass_rows = len(minus)  # the neighbour without the victim is bounded in one pass, the full file in two
    assert math.ceil(len(minus) / pass_rows) == 1 and math.ceil(len(rows) / pass_rows) == 2
    full, _ = _built(tmp_path, "d.parquet", rows, pass_rows)
    less, _ = _built(tmp_path, "d_minus.parquet", minus, pass_rows)
    victims = {r["tag"] for r in rows if r["pid"] == victim}
    assert {t: v for t, v in full.items() if t not in victims} == less
    assert len(set(full) & victims) == K


def test_build_memory_settings() -> None:
    assert memory_bytes("4GB") == 4 * 10**9 and memory_bytes("512MiB") == 512 * 2**20
    assert memory_bytes("lots") is None and duckdb_memory("lots") == "lots"
    assert duckdb_memory("4GB") == "3000MB"  # the rest: Parquet writer buffers, Python
    assert pass_rows_for("4GB", 5) == 2_400_000 and pass_rows_for("4GB", 10) == 1_200_000
    assert pass_rows_for("1GB", 5) < pass_rows_for("4GB", 5)


def test_an_error_text_loses_the_key_pads_in_both_spellings() -> None:
    text = "Binder Error near CAST('\\x36\\x37\\x34' AS BLOB) and from_hex('" + "ab" * 40 + "')"
    cleaned = redact(text)
    assert "\\x36" not in cleaned and "ab" * 40 not in cleaned and "Binder Error" in cleaned


def test_what_a_dead_builder_left_is_removed_by_the_next_build(tmp_path: Path) -> None:
    """Staged rows and half-built files of a build child that was killed do not pile up in the state."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    engine = tmp_path / "engine"
    (engine / "spill" / f"stage-{pid}-0badf00d" / "rows").mkdir(parents=True)
    (engine / f"catalog-ab.duckdb.{pid}-0badf00d.building").write_bytes(b"x")
    mine = engine / "spill" / f"stage-{os.getpid()}-0badf00d"  # a live builder's: kept
    mine.mkdir()
    pq.write_table(pa.Table.from_pylist(_rows(persons=20)), tmp_path / "panel.parquet")
    build({"panel": _panel_dataset()}, tmp_path, engine / "catalog-cd.duckdb", key=KEY)
    assert sorted(p.name for p in engine.iterdir()) == ["catalog-cd.duckdb", "spill"]
    assert [p.name for p in (engine / "spill").iterdir()] == [mine.name]
