"""SDC rules against hand-computed cases (ACRO defaults: threshold 10, nk n=2 k=0.9, p=0.1)."""

from __future__ import annotations

import pytest

from sandbox.exports.checks import sdc
from sandbox.exports.tables import read_csv


@pytest.mark.parametrize(
    ("contributions", "dominated"),
    [
        ([50, 45, 5], True),  # (50+45)/100 = 0.95 > 0.9
        ([40, 30, 30], False),  # 0.70
        ([45, 45, 10], False),  # exactly 0.9 is not over k
        ([100], True),  # one contributor holds everything
        ([0, 0], False),  # empty cell: not applicable
    ],
)
def test_nk_dominance(contributions: list[float], dominated: bool) -> None:
    assert sdc.nk_dominance(contributions) is dominated


@pytest.mark.parametrize(
    ("contributions", "sensitive"),
    [
        ([100, 50, 5], True),  # rest 5 / largest 100 = 0.05 < 0.1
        ([100, 50, 20], False),  # 0.20
        ([100, 50, 10], False),  # exactly 0.1 is not under p
        ([100, 50], True),  # nothing besides the two largest
        ([0], False),
    ],
)
def test_p_percent(contributions: list[float], sensitive: bool) -> None:
    assert sdc.p_percent(contributions) is sensitive


@pytest.mark.parametrize(("count", "below"), [(9, True), (10, False), (1, True), (0, False), (-2, True), (11, False)])
def test_threshold(count: int, below: bool) -> None:
    assert sdc.below_threshold(count) is below


@pytest.mark.parametrize(
    "name", ["n", "count", "Counts", "freq", "frequency", "n_people", "people_n", "count_x", "x_count",
             "num_cases", "number_of_visits", "count(*)"],
)
def test_count_column_names(name: str) -> None:
    assert sdc.is_count_column(name)


@pytest.mark.parametrize("name", ["income", "mean_age", "sex", "nation", "country"])
def test_not_count_column_names(name: str) -> None:
    assert not sdc.is_count_column(name)
    assert sdc.is_count_column(name, declared=[name])


def _by_rule(results: list[dict]) -> dict[str, dict]:
    return {r["rule"]: r for r in results}


def test_count_table_threshold_and_zeros_name_their_cells() -> None:
    table = read_csv(b"sex,age_band,n\nfemale,20-29,125\nfemale,30-39,9\nmale,20-29,0\nmale,30-39,10\n")
    res = _by_rule(sdc.check_table(table))
    assert res["sdc.threshold"]["outcome"] == "fail"
    assert [(c["row"], c["column"], c["value"]) for c in res["sdc.threshold"]["cells"]] == [(1, "n", 9)]
    assert res["sdc.zeros"]["outcome"] == "review"
    assert [(c["row"], c["column"]) for c in res["sdc.zeros"]["cells"]] == [(2, "n")]
    assert res["sdc.dominance"]["outcome"] == "pass"
    assert "not applicable" in res["sdc.dominance"]["detail"]


def test_declared_count_column() -> None:
    table = read_csv(b"region,persons\na,4\nb,40\n")
    assert _by_rule(sdc.check_table(table))["sdc.threshold"]["outcome"] == "review"  # no count column
    res = _by_rule(sdc.check_table(table, ["persons"]))
    assert res["sdc.threshold"]["outcome"] == "fail"
    assert res["sdc.threshold"]["cells"][0]["row"] == 0


def test_magnitude_table_with_contributor_columns() -> None:
    # hand-computed per row: nk = (top1+top2)/total, p = (total-top1-top2)/top1
    table = read_csv(
        b"region,n,income,income_top1,income_top2\n"
        b"a,12,1000,600,350\n"  # nk 0.95 FAIL; p 50/600 = 0.083 FAIL
        b"b,15,1000,400,300\n"  # nk 0.70 pass; p 300/400 = 0.75 pass
        b"c,11,1000,850,20\n"  # nk 0.87 pass; p 130/850 = 0.153 pass
        b"d,20,500,300,160\n"  # nk 0.92 FAIL; p 40/300 = 0.133 pass
    )
    res = _by_rule(sdc.check_table(table))
    assert res["sdc.threshold"]["outcome"] == "pass"
    assert res["sdc.dominance"]["outcome"] == "fail"
    assert [c["row"] for c in res["sdc.dominance"]["cells"]] == [0, 3]
    assert all(c["column"] == "income" for c in res["sdc.dominance"]["cells"])
    assert res["sdc.p_percent"]["outcome"] == "fail"
    assert [c["row"] for c in res["sdc.p_percent"]["cells"]] == [0]
    assert "95.0%" in res["sdc.dominance"]["cells"][0]["reason"]


def test_magnitude_without_contributors_is_named() -> None:
    table = read_csv(b"sex,n,mean_income\nf,100,2.51\nm,120,2.73\n")
    res = _by_rule(sdc.check_table(table))
    assert res["sdc.dominance"]["outcome"] == "pass"
    assert "mean_income" in res["sdc.dominance"]["detail"]
