"""The identifier check: every digit run in any token, judged against what chance gives in the id space.

The dense small-integer id space is a real panel built into a real engine (DuckDB, keyed hashes);
the sparse space is NHANES-like (ids 93703-102956 among five-digit numbers).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sandbox.engine import Engine
from sandbox.exports.checks import identifiers
from sandbox.exports.tables import read_csv
from sandbox.policy.models import Dataset

SPARSE = {str(i) for i in range(93703, 102957)}


def sparse_matcher(_ds: str, values: list[str]) -> int:
    return sum(1 for v in values if v in SPARSE)


@pytest.fixture(scope="module")
def panel_matcher(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A panel whose units are numbered 1..3000 (every number in that range is an id)."""
    root = tmp_path_factory.mktemp("panel-data")
    pq.write_table(pa.table({"pid": list(range(1, 3001)), "visits": [i % 9 for i in range(3000)]}),
                   root / "panel.parquet")
    ds = Dataset.model_validate({
        "id": "panel", "title": "Panel", "source": "panel.parquet", "classification": "L2",
        "privacy_unit": "pid", "max_rows_per_unit": 1,
        "columns": {"pid": {"type": "id"}, "visits": {"type": "int", "bounds": [0, 10]}}})
    engine = Engine(root, tmp_path_factory.mktemp("panel-engine"), threads=1, memory_limit="256MB",
                    build_memory="512MB")
    engine.ensure({"panel": ds})
    return engine.unit_id_matches


@pytest.mark.parametrize("cell", ["id93703", "93703_", "ID-93703", "00093703", "x=93703;", "93703.0", "p93703q"])
def test_ids_inside_any_token_are_found(cell: str) -> None:
    assert "93703" in identifiers.tokens_of([cell])


def test_a_column_of_id_tokens_fails() -> None:
    table = read_csv(b"who,n\nid93703,11\n93704_,12\nID-93705,13\n00093706,14\nref 93707 (dup),15\n")
    res = identifiers.check_table(table, {"nhanes_2017": "seqn"}, sparse_matcher)
    assert res["outcome"] == "fail"
    assert [c["column"] for c in res["cells"]] == ["who"]


def test_ids_in_notebook_json_saved_as_text_fail() -> None:
    text = '{"cells": [{"outputs": [{"text": "seqn\\n93703\\n93704\\n93705\\n93706\\n"}]}], "nbformat": 4}'
    res = identifiers.check_text(text, {"nhanes_2017": "seqn"}, sparse_matcher)
    assert res["outcome"] == "fail"


def test_one_chance_match_in_a_sparse_space_is_review() -> None:
    table = read_csv(b"a,n\nx,95000\ny,500\nz,600\n")
    assert identifiers.check_table(table, {"nhanes_2017": "seqn"}, sparse_matcher)["outcome"] == "review"


def test_honest_count_table_in_a_dense_small_integer_id_space_is_review_not_fail(panel_matcher) -> None:  # noqa: ANN001
    """Regression: two of three counts are ids by chance when every number up to 3000 is an id."""
    table = read_csv(b"region,n\nnorth,1534\nsouth,2210\neast,4420\n")
    res = identifiers.check_table(table, {"panel": "pid"}, panel_matcher)
    assert res["outcome"] == "review", res
    cell = res["cells"][0]
    assert (cell["column"], cell["matched"], cell["distinct"]) == ("n", 2, 3)
    assert cell["expected"] > 0.5 and "chance" in cell["reason"] and "dense" in cell["reason"]


def test_many_distinct_values_nearly_all_ids_fail_even_in_a_dense_space(panel_matcher) -> None:  # noqa: ANN001
    rows = "".join(f"u{pid},1\n" for pid in range(101, 181))  # 80 unit ids as tokens
    table = read_csv(f"unit,flag\n{rows}".encode())
    res = identifiers.check_table(table, {"panel": "pid"}, panel_matcher)
    assert res["outcome"] == "fail"
    assert res["cells"][0]["column"] == "unit"


def test_the_real_engine_sees_tokens_the_same_way(panel_matcher) -> None:  # noqa: ANN001
    tokens = identifiers.tokens_of(["id0042", "x-2999-y", "3001"])
    assert tokens == ["0042", "42", "2999", "3001"]
    assert panel_matcher("panel", tokens) == 2  # 42 and 2999
    assert panel_matcher("panel", ["3001", "0"]) == 0


def test_chance_is_estimated_per_magnitude(panel_matcher) -> None:  # noqa: ANN001
    rates = identifiers.chance_rates("panel", ["7", "42", "512", "2048", "99999"], panel_matcher)
    assert rates[1] == pytest.approx(0.9, abs=0.01)  # 1-9 are ids, 0 is not
    assert rates[2] == rates[3] == 1.0
    assert 0.15 < rates[4] < 0.3  # 1000-3000 of 1000-9999
    assert rates[5] == 0.0


def test_poisson_tail() -> None:
    assert identifiers.poisson_tail(0, 3.0) == 1.0
    assert identifiers.poisson_tail(1, 0.0) == 0.0
    assert identifiers.poisson_tail(2, 1.0) == pytest.approx(1 - 2 / 2.718281828459045, rel=1e-6)


@pytest.mark.parametrize("cell", ["\uff19\uff13\uff17\uff10\uff13", "\u0669\u0663\u0667\u0660\u0663", "93,703",
                                  "93 703", "93.703"])
def test_ids_in_other_digits_or_grouped_are_found(cell: str) -> None:
    assert "93703" in identifiers.tokens_of([cell])


def test_ids_hidden_among_many_other_numbers_fail() -> None:
    noise = " ".join(str(n) for n in range(1000, 1400))  # 400 four-digit numbers, none an id
    ids = " ".join(f"id{s}" for s in range(93703, 93723))  # 20 ids
    assert identifiers.check_text(f"{noise} {ids}", {"nhanes_2017": "seqn"}, sparse_matcher)["outcome"] == "fail"
    one = f"{noise} id93703"
    assert identifiers.check_text(one, {"nhanes_2017": "seqn"}, sparse_matcher)["outcome"] == "review"
