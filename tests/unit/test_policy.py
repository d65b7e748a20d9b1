"""Policy files: valid demo policies load; invalid ones fail naming the file, field and problem."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from sandbox.errors import Forbidden, PolicyError
from sandbox.policy.loader import load_dataset, load_grant, load_policies
from sandbox.policy.rules import check_grant_fits_catalog, check_grant_usable, effective_status

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def test_demo_policies_load() -> None:
    p = load_policies(POLICIES)
    assert set(p.datasets) == {"nhanes_2017", "adult_income"}
    assert p.datasets["nhanes_2017"].privacy_unit == "seqn"
    assert p.datasets["adult_income"].privacy_unit == "row"
    grant = p.grants["g-2026-001"]
    assert grant.members == ("alice", "bob")
    check_grant_fits_catalog(grant, p.datasets)
    assert "carol" in p.roles.reviewers


def _write(tmp_path: Path, data: dict, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _grant_dict(**over) -> dict:  # noqa: ANN003
    data = yaml.safe_load((POLICIES / "grants" / "g-2026-001.yaml").read_text())
    data.update(over)
    return data


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"budget": {"epsilon": -1}}, "budget.epsilon", "greater than 0"),
        ({"valid_until": "2020-01-01"}, "(top level)", "before valid_from"),
        ({"mode": "everything"}, "mode", "overall"),
        ({"members": []}, "members", "at least one member"),
        ({"max_epsilon_per_query": 50}, "(top level)", "exceeds the whole budget"),
        ({"surprise": 1}, "surprise", "Extra inputs"),
        ({"exports": {"reviewers_required": 3}}, "exports.reviewers_required", "less than or equal to 2"),
        ({"operator": " "}, "operator", "match pattern"),  # caps across grants key on the operator
    ],
)
def test_invalid_grant_names_file_field_problem(tmp_path: Path, change: dict, field: str, words: str) -> None:
    path = _write(tmp_path, _grant_dict(**change))
    with pytest.raises(PolicyError) as info:
        load_grant(path)
    assert str(path) in info.value.message
    assert f": {field}:" in info.value.message
    assert words in info.value.message


def test_invalid_dataset_messages(tmp_path: Path) -> None:
    data = yaml.safe_load((POLICIES / "datasets" / "nhanes_2017.yaml").read_text())
    data["columns"]["age"] = {"type": "float"}  # (an int without bounds is a code column: keys only)
    data["privacy_unit"] = "sex"
    with pytest.raises(PolicyError) as info:
        load_dataset(_write(tmp_path, data))
    assert "columns.age" in info.value.message and "bounds" in info.value.message


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("id: [unclosed")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_grant(path)


def test_catalog_rules_l4_l3_id_and_unknown_columns() -> None:
    p = load_policies(POLICIES)
    nhanes = p.datasets["nhanes_2017"]
    grant = p.grants["g-2026-001"]
    catalog = {**p.datasets, "nhanes_2017": nhanes.model_copy(update={"classification": "L4"})}
    with pytest.raises(PolicyError, match="L4"):
        check_grant_fits_catalog(grant, catalog)
    catalog["nhanes_2017"] = nhanes.model_copy(update={"classification": "L3"})
    with pytest.raises(PolicyError, match="reviewers_required: 2|max_epsilon_per_query"):
        check_grant_fits_catalog(grant, catalog)
    bad = type(grant).model_validate(
        {**grant.model_dump(), "datasets": {"nhanes_2017": {"columns": ["seqn", "nope"]}}}
    )
    with pytest.raises(PolicyError) as info:
        check_grant_fits_catalog(bad, p.datasets)
    assert "'seqn' is the privacy unit" in info.value.message
    assert "'nope' is not in the catalog" in info.value.message


def test_usable_checks_each_condition() -> None:
    grant = load_policies(POLICIES).grants["g-2026-001"]
    today = dt.date(2026, 6, 1)
    check_grant_usable(grant, "alice", today)
    cases = [
        (grant, "mallory", today, "not_a_member"),
        (grant.model_copy(update={"status": "suspended"}), "alice", today, "grant_suspended"),
        (grant.model_copy(update={"status": "revoked"}), "alice", today, "grant_revoked"),
        (grant, "alice", dt.date(2028, 1, 1), "grant_expired"),
        (grant, "alice", dt.date(2025, 1, 1), "grant_not_yet_valid"),
    ]
    for g, user, day, code in cases:
        with pytest.raises(Forbidden) as info:
            check_grant_usable(g, user, day)
        assert info.value.code == code
    assert effective_status(grant, dt.date(2028, 1, 1)) == "expired"


def _dataset_dict(**over) -> dict:  # noqa: ANN003
    data = yaml.safe_load((POLICIES / "datasets" / "nhanes_2017.yaml").read_text())
    data.update(over)
    return data


@pytest.mark.parametrize("name", ["row", "rowid", "file_row_number", "filename", "file_index", "__v_age", "__ids_x"])
def test_reserved_column_names_are_refused(tmp_path: Path, name: str) -> None:
    data = _dataset_dict()
    data["columns"] = {**data["columns"], name: {"type": "int", "bounds": [0, 1]}}
    with pytest.raises(PolicyError) as info:
        load_dataset(_write(tmp_path, data))
    assert "reserved" in info.value.message and repr(name) in info.value.message


def test_an_id_column_named_row_cannot_turn_bounding_off(tmp_path: Path) -> None:
    """The attack of the issue: `privacy_unit: row` with a real id column literally named `row`."""
    data = _dataset_dict(privacy_unit="row", max_rows_per_unit=1)
    cols = {k: v for k, v in data["columns"].items() if k != "seqn"}
    data["columns"] = {"row": {"type": "id"}, **cols}
    with pytest.raises(PolicyError, match="reserved"):
        load_dataset(_write(tmp_path, data))


def test_l3_dataset_needs_a_total_budget(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="L3 dataset needs `budget"):
        load_dataset(_write(tmp_path, _dataset_dict(classification="L3", budget=None)))
    ds = load_dataset(_write(tmp_path, _dataset_dict(
        classification="L3", budget={"epsilon": 50}, max_epsilon_per_operator=20,
        operator_caps={"Acme Health Analytics Ltd.": 12})))
    assert ds.budget.epsilon == 50
    assert ds.operator_cap("Acme Health Analytics Ltd.") == 12 and ds.operator_cap("Other Ltd.") == 20


@pytest.mark.parametrize("caps", [{"Acme": 0}, {"Acme": -1}, {"Acme": "lots"}])
def test_bad_operator_caps_are_refused(tmp_path: Path, caps: dict) -> None:
    with pytest.raises(PolicyError, match="operator_caps"):
        load_dataset(_write(tmp_path, _dataset_dict(operator_caps=caps)))


def test_zcdp_grant_needs_a_delta(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="needs a budget delta"):
        load_grant(_write(tmp_path, _grant_dict(accounting="zcdp", budget={"epsilon": 10.0})))
    assert load_grant(_write(tmp_path, _grant_dict(accounting="zcdp"))).accounting == "zcdp"


@pytest.mark.parametrize("name", ["row\n", "rowid\n", "file_row_number\n", "age\n"])
def test_column_names_ending_in_a_newline_are_refused(tmp_path: Path, name: str) -> None:
    """``$`` matches before a final newline: identifiers are checked with fullmatch."""
    data = _dataset_dict()
    data["columns"] = {**data["columns"], name: {"type": "int", "bounds": [0, 1]}}
    with pytest.raises(PolicyError):
        load_dataset(_write(tmp_path, data))


def test_ids_and_user_names_ending_in_a_newline_are_refused() -> None:
    from sandbox.policy.models import GRANT_ID, IDENT, USER

    assert not IDENT.match("nhanes\n") and not GRANT_ID.match("g-1\n") and not USER.match("alice\n")
