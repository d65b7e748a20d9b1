"""The export transition table, exhaustively: every (state, action) pair is legal or refused."""

from __future__ import annotations

import itertools

import pytest

from sandbox.errors import Conflict
from sandbox.exports.workflow import (
    ACTIONS,
    AUDIT_ACTIONS,
    STATES,
    TRANSITIONS,
    can_transition,
    next_state,
    outcome_of,
)

# written out by hand from the issue, independently of TRANSITIONS
EXPECTED = {
    (None, "submit"): "submitted",
    ("submitted", "vote"): "partially_reviewed",
    ("submitted", "approve"): "approved",
    ("submitted", "reject"): "rejected",
    ("submitted", "return"): "returned",
    ("submitted", "withdraw"): "withdrawn",
    ("partially_reviewed", "vote"): "partially_reviewed",
    ("partially_reviewed", "approve"): "approved",
    ("partially_reviewed", "reject"): "rejected",
    ("partially_reviewed", "return"): "returned",
    ("partially_reviewed", "withdraw"): "withdrawn",
    ("submitted", "override"): "submitted",  # an admin override changes no state, but is a transition
    ("partially_reviewed", "override"): "partially_reviewed",
    ("returned", "change_files"): "returned",
    ("returned", "resubmit"): "submitted",
    ("returned", "withdraw"): "withdrawn",
    ("approved", "release"): "released",
    ("approved", "withdraw"): "withdrawn",
}
ALL_PAIRS = list(itertools.product((None, *STATES), ACTIONS))


def test_table_is_exactly_the_specified_one() -> None:
    assert TRANSITIONS == EXPECTED


@pytest.mark.parametrize(("state", "action"), ALL_PAIRS)
def test_every_pair_is_legal_or_refused(state: str | None, action: str) -> None:
    if (state, action) in EXPECTED:
        assert next_state(state, action) == EXPECTED[(state, action)]
        assert can_transition(state, action)
    else:
        with pytest.raises(Conflict) as err:
            next_state(state, action)
        assert err.value.code == "illegal_transition"
        assert err.value.status == 409
        assert not can_transition(state, action)


@pytest.mark.parametrize("terminal", ["rejected", "withdrawn", "released"])
def test_terminal_states_have_no_way_out(terminal: str) -> None:
    assert not [a for a in ACTIONS if can_transition(terminal, a)]


def test_every_state_is_reachable_and_every_action_audited() -> None:
    reached = {None}
    frontier = [None]
    while frontier:
        s = frontier.pop()
        for (src, _a), dst in TRANSITIONS.items():
            if src == s and dst not in reached:
                reached.add(dst)
                frontier.append(dst)
    assert reached == {None, *STATES}
    assert set(AUDIT_ACTIONS) == set(ACTIONS)
    assert all(v.startswith("export.") for v in AUDIT_ACTIONS.values())


@pytest.mark.parametrize(
    ("votes", "outcome"),
    [
        (["approve"], "approve"),
        (["approve", "approve"], "approve"),
        (["approve", "reject"], "reject"),
        (["return", "reject"], "reject"),
        (["approve", "return"], "return"),
        (["return"], "return"),
    ],
)
def test_round_outcome(votes: list[str], outcome: str) -> None:
    assert outcome_of(votes) == outcome
