"""The planner: one test per decision-table row, then Hypothesis properties.

Hypothesis profiles ``dev`` (default) and ``ci`` are chosen with ``HYPOTHESIS_PROFILE``; they are
built here as plain ``settings`` objects so this module does not change global Hypothesis state.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import agent.core.merge as reconcile
from agent.core.merge import FIELDS, FieldConflict, Plan, Policy, SideState, plan

_PROFILES = {
    "dev": settings(max_examples=200, deadline=None),
    "ci": settings(max_examples=1000, deadline=None, derandomize=True),
}
PROFILE = _PROFILES.get(os.environ.get("HYPOTHESIS_PROFILE", "dev"), _PROFILES["dev"])

ALICE = "alice@contoso.com"
BOB = "bob@contoso.com"
ALICE_ID = "a" * 32
BOB_ID = "b" * 32

# Lossy on purpose: Informational and Low both become impact 3; states 6/7/8 all mean Closed.
TO_SNOW: dict[str, dict[str, str]] = {
    "severity": {"High": "1", "Medium": "2", "Low": "3", "Informational": "3"},
    "status": {"New": "1", "Active": "2", "Closed": "6"},
    "owner": {"": "", ALICE: ALICE_ID, BOB: BOB_ID},
}
TO_SENTINEL: dict[str, dict[str, str]] = {
    "severity": {"1": "High", "2": "Medium", "3": "Low"},
    "status": {"1": "New", "2": "Active", "3": "Active", "6": "Closed", "7": "Closed", "8": "Closed"},
    "owner": {"": "", ALICE_ID: ALICE, BOB_ID: BOB},
}
UNKNOWN_SENTINEL = {"severity": "Critical", "status": "Dismissed", "owner": "carol@contoso.com"}
UNKNOWN_SNOW = {"severity": "9", "status": "42", "owner": "c" * 32}

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)

NEWEST = Policy(TO_SNOW, TO_SENTINEL, "newest")


def side(
    severity: str = "High", status: str = "Active", owner: str = "", modified: datetime = T0
) -> SideState:
    return SideState({"severity": severity, "status": status, "owner": owner}, modified)


def snow_side(severity: str = "1", status: str = "2", owner: str = "", modified: datetime = T0) -> SideState:
    return SideState({"severity": severity, "status": status, "owner": owner}, modified)


BASE: dict[str, tuple[str, str]] = {"severity": ("High", "1"), "status": ("Active", "2"), "owner": ("", "")}


def equal_by_meaning(f: str, s: str, n: str, policy: Policy = NEWEST) -> bool:
    return policy.to_snow[f].get(s) == n or policy.to_sentinel[f].get(n) == s


# --- one test per decision-table row ----------------------------------------------------------


def test_unchanged() -> None:
    p = plan(BASE, side(), snow_side(), NEWEST)
    assert p.cases == {"severity": "unchanged", "status": "unchanged", "owner": "unchanged"}
    assert not p.writes
    assert not p.base_changed
    assert p.base == BASE
    assert p.conflicts == () and p.unmapped == ()


def test_sentinel_changed() -> None:
    p = plan(BASE, side(severity="Medium"), snow_side(), NEWEST)
    assert p.cases["severity"] == "sentinel_changed"
    assert p.to_snow == {"severity": "2"}
    assert p.to_sentinel == {}
    assert p.base["severity"] == ("Medium", "2")
    assert p.writes and p.base_changed


def test_sentinel_changed_equivalent() -> None:
    base = {**BASE, "severity": ("Low", "3")}
    p = plan(base, side(severity="Informational"), snow_side(severity="3"), NEWEST)
    assert p.cases["severity"] == "sentinel_changed_equivalent"
    assert not p.writes
    assert p.base["severity"] == ("Informational", "3")
    assert p.base_changed


def test_snow_changed() -> None:
    p = plan(BASE, side(), snow_side(status="6"), NEWEST)
    assert p.cases["status"] == "snow_changed"
    assert p.to_sentinel == {"status": "Closed"}
    assert p.to_snow == {}
    assert p.base["status"] == ("Closed", "6")


def test_snow_changed_equivalent() -> None:
    base = {**BASE, "status": ("Closed", "6")}
    p = plan(base, side(status="Closed"), snow_side(status="7"), NEWEST)
    assert p.cases["status"] == "snow_changed_equivalent"
    assert not p.writes
    assert p.base["status"] == ("Closed", "7")
    assert p.base_changed


def test_both_changed_agree() -> None:
    p = plan(BASE, side(owner=ALICE), snow_side(owner=ALICE_ID), NEWEST)
    assert p.cases["owner"] == "both_changed_agree"
    assert not p.writes
    assert p.conflicts == ()
    assert p.base["owner"] == (ALICE, ALICE_ID)


def test_both_changed_conflict() -> None:
    p = plan(BASE, side(severity="Low", modified=T0), snow_side(severity="2", modified=T1), NEWEST)
    assert p.cases["severity"] == "both_changed_conflict"
    assert p.conflicts == (FieldConflict("severity", "Low", "2", "servicenow"),)
    assert p.to_sentinel == {"severity": "Medium"}
    assert p.to_snow == {}
    assert p.base["severity"] == ("Medium", "2")


def test_no_base_agree() -> None:
    p = plan(None, side(severity="Informational"), snow_side(severity="3"), NEWEST)
    assert set(p.cases.values()) == {"no_base_agree"}
    assert not p.writes
    assert p.base == {"severity": ("Informational", "3"), "status": ("Active", "2"), "owner": ("", "")}
    assert p.base_changed


def test_no_base_conflict() -> None:
    p = plan(None, side(owner=ALICE, modified=T1), snow_side(owner=BOB_ID, modified=T0), NEWEST)
    assert p.cases["owner"] == "no_base_conflict"
    assert p.conflicts == (FieldConflict("owner", ALICE, BOB_ID, "sentinel"),)
    assert p.to_snow == {"owner": ALICE_ID}
    assert p.base["owner"] == (ALICE, ALICE_ID)


def test_unmapped() -> None:
    p = plan(BASE, side(severity="Critical", status="Closed"), snow_side(), NEWEST)
    assert p.cases["severity"] == "unmapped"
    assert p.unmapped == (("severity", "sentinel", "Critical"),)
    assert "severity" not in p.to_snow
    assert p.base["severity"] == BASE["severity"]
    # The other fields still proceed.
    assert p.cases["status"] == "sentinel_changed"
    assert p.to_snow == {"status": "6"}


def test_every_table_row_has_a_test() -> None:
    doc = reconcile.__doc__ or ""
    rows = set(re.findall(r"^([a-z_]+)\s{2,}", doc, flags=re.MULTILINE)) - {"case"}
    expected = {
        "unchanged",
        "sentinel_changed",
        "sentinel_changed_equivalent",
        "snow_changed",
        "snow_changed_equivalent",
        "both_changed_agree",
        "both_changed_conflict",
        "no_base_agree",
        "no_base_conflict",
        "unmapped",
    }
    assert rows == expected
    assert all(callable(globals().get(f"test_{case}")) for case in rows)


# --- more golden cases --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "s_time", "n_time", "winner"),
    [
        ("sentinel", T0, T1, "sentinel"),
        ("servicenow", T1, T0, "servicenow"),
        ("newest", T1, T0, "sentinel"),
        ("newest", T0, T1, "servicenow"),
        ("newest", T0, T0, "sentinel"),  # a tie keeps Sentinel's value
    ],
)
def test_conflict_policy_picks_winner(policy: str, s_time: datetime, n_time: datetime, winner: str) -> None:
    pol = Policy(TO_SNOW, TO_SENTINEL, policy)
    p = plan(BASE, side(status="Closed", modified=s_time), snow_side(status="1", modified=n_time), pol)
    assert p.conflicts == (FieldConflict("status", "Closed", "1", winner),)
    if winner == "sentinel":
        assert (p.to_snow, p.to_sentinel, p.base["status"]) == ({"status": "6"}, {}, ("Closed", "6"))
    else:
        assert (p.to_snow, p.to_sentinel, p.base["status"]) == ({}, {"status": "New"}, ("New", "1"))


def test_unknown_conflict_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match="conflict policy"):
        Policy(TO_SNOW, TO_SENTINEL, "oldest")


def test_lossy_map_does_not_flip_flop() -> None:
    base = {**BASE, "severity": ("Low", "3")}
    snow = snow_side(severity="3")
    first = plan(base, side(severity="Informational"), snow, NEWEST)
    assert not first.writes
    assert first.base["severity"] == ("Informational", "3")
    second = plan(first.base, side(severity="Informational"), snow, NEWEST)
    assert not second.writes and not second.base_changed


def test_changed_fields_of_one_side_are_batched() -> None:
    p = plan(BASE, side(severity="Low", status="Closed", owner=BOB), snow_side(), NEWEST)
    assert p.to_snow == {"severity": "3", "status": "6", "owner": BOB_ID}
    assert p.to_sentinel == {}


def test_writes_go_both_ways_in_one_plan() -> None:
    p = plan(BASE, side(severity="Low"), snow_side(owner=ALICE_ID), NEWEST)
    assert p.to_snow == {"severity": "3"}
    assert p.to_sentinel == {"owner": ALICE}


def test_interrupted_run_heals() -> None:
    # The ServiceNow write landed but the shadow was never saved: next cycle only records it.
    p = plan(BASE, side(status="Closed"), snow_side(status="6"), NEWEST)
    assert p.cases["status"] == "both_changed_agree"
    assert not p.writes and p.base_changed


def test_conflict_with_unmapped_winner_is_skipped_not_resolved() -> None:
    pol = Policy(TO_SNOW, TO_SENTINEL, "servicenow")
    p = plan(BASE, side(severity="Low"), snow_side(severity="9"), pol)
    assert p.cases["severity"] == "unmapped"
    assert p.unmapped == (("severity", "servicenow", "9"),)
    assert p.conflicts == ()
    assert not p.writes and p.base["severity"] == BASE["severity"]


def test_unmapped_without_base_leaves_field_out_of_base() -> None:
    pol = Policy(TO_SNOW, TO_SENTINEL, "sentinel")
    p = plan(None, side(severity="Critical"), snow_side(severity="1"), pol)
    assert p.cases["severity"] == "unmapped"
    assert "severity" not in p.base


def test_unassigning_syncs_through_the_empty_row() -> None:
    base = {**BASE, "owner": (ALICE, ALICE_ID)}
    p = plan(base, side(owner=""), snow_side(owner=ALICE_ID), NEWEST)
    assert p.to_snow == {"owner": ""}
    assert p.base["owner"] == ("", "")


def test_field_without_tables_is_unmapped() -> None:
    pol = Policy({"severity": TO_SNOW["severity"]}, {"severity": TO_SENTINEL["severity"]}, "newest")
    p = plan(BASE, side(owner=ALICE), snow_side(), pol)
    assert p.unmapped == (("owner", "sentinel", ALICE),)
    assert not p.writes


def test_fields_argument_limits_the_plan_and_keeps_other_base_entries() -> None:
    p = plan(BASE, side(severity="Low", owner=BOB), snow_side(), NEWEST, fields=("severity",))
    assert p.to_snow == {"severity": "3"}
    assert p.base["owner"] == BASE["owner"]
    assert set(p.cases) == {"severity"}


# --- properties ---------------------------------------------------------------------------------


def sentinel_values(f: str) -> st.SearchStrategy[str]:
    known = sorted(set(TO_SNOW[f]) | set(TO_SENTINEL[f].values()))
    return st.sampled_from([*known, UNKNOWN_SENTINEL[f]])


def snow_values(f: str) -> st.SearchStrategy[str]:
    known = sorted(set(TO_SENTINEL[f]) | set(TO_SNOW[f].values()))
    return st.sampled_from([*known, UNKNOWN_SNOW[f]])


@st.composite
def sides(draw: st.DrawFn) -> tuple[SideState, SideState]:
    times = st.sampled_from([T0, T1])
    s = SideState({f: draw(sentinel_values(f)) for f in FIELDS}, draw(times))
    n = SideState({f: draw(snow_values(f)) for f in FIELDS}, draw(times))
    return s, n


@st.composite
def meaning_pairs(draw: st.DrawFn, f: str) -> tuple[str, str]:
    if draw(st.booleans()):
        s = draw(st.sampled_from(sorted(TO_SNOW[f])))
        return s, TO_SNOW[f][s]
    n = draw(st.sampled_from(sorted(TO_SENTINEL[f])))
    return TO_SENTINEL[f][n], n


@st.composite
def bases(draw: st.DrawFn) -> dict[str, tuple[str, str]] | None:
    """Mostly agreed pairs, as the shadow stores them; sometimes any pair (the maps were edited)."""
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    out: dict[str, tuple[str, str]] = {}
    for f in FIELDS:
        kind = draw(st.integers(0, 5))
        if kind == 1:
            out[f] = (draw(sentinel_values(f)), draw(snow_values(f)))
        elif kind > 1:
            out[f] = draw(meaning_pairs(f))
    return out


policies = st.sampled_from([Policy(TO_SNOW, TO_SENTINEL, c) for c in ("newest", "sentinel", "servicenow")])


def apply(p: Plan, s: SideState, n: SideState) -> tuple[SideState, SideState]:
    return (
        replace(s, values={**s.values, **p.to_sentinel}),
        replace(n, values={**n.values, **p.to_snow}),
    )


def assert_settled(p: Plan) -> None:
    assert not p.writes, p
    assert not p.base_changed, p
    assert p.conflicts == ()


@PROFILE
@given(bases(), sides(), policies)
def test_property_convergence(
    base: dict[str, tuple[str, str]] | None, both: tuple[SideState, SideState], policy: Policy
) -> None:
    s, n = both
    first = plan(base, s, n, policy)
    s2, n2 = apply(first, s, n)
    assert_settled(plan(first.base, s2, n2, policy))
    for f in FIELDS:
        if first.cases[f] == "unmapped":
            continue
        assert first.base[f] == (s2.values[f], n2.values[f])
        # An untouched field whose stored pair no longer agrees (the maps were edited) is left alone.
        if first.cases[f] != "unchanged" or base is None or equal_by_meaning(f, *base[f], policy):
            assert equal_by_meaning(f, s2.values[f], n2.values[f], policy)


@PROFILE
@given(bases(), sides(), policies)
def test_property_idempotence(
    base: dict[str, tuple[str, str]] | None, both: tuple[SideState, SideState], policy: Policy
) -> None:
    s, n = both
    assert plan(base, s, n, policy) == plan(base, s, n, policy)


@PROFILE
@given(st.data(), bases(), sides(), policies)
def test_property_no_write_for_untouched_field(
    data: st.DataObject,
    base: dict[str, tuple[str, str]] | None,
    both: tuple[SideState, SideState],
    policy: Policy,
) -> None:
    assume(base)
    assert base is not None
    untouched = data.draw(st.sets(st.sampled_from(sorted(base)), min_size=1))
    s, n = both
    s = replace(s, values={**s.values, **{f: base[f][0] for f in untouched}})
    n = replace(n, values={**n.values, **{f: base[f][1] for f in untouched}})
    p = plan(base, s, n, policy)
    for f in untouched:
        assert f not in p.to_snow and f not in p.to_sentinel
        assert p.cases[f] == "unchanged"
        assert p.base[f] == base[f]


@PROFILE
@given(st.data(), st.sampled_from(FIELDS), sides(), policies)
def test_property_false_conflicts_are_not_conflicts(
    data: st.DataObject, f: str, both: tuple[SideState, SideState], policy: Policy
) -> None:
    s, n = both
    bs, bn = data.draw(st.tuples(sentinel_values(f), snow_values(f)))
    new_s, new_n = data.draw(meaning_pairs(f))
    assume(new_s != bs and new_n != bn)
    base = {f: (bs, bn)}
    s = replace(s, values={**s.values, f: new_s})
    n = replace(n, values={**n.values, f: new_n})
    p = plan(base, s, n, policy)
    assert p.cases[f] == "both_changed_agree"
    assert all(c.field != f for c in p.conflicts)
    assert f not in p.to_snow and f not in p.to_sentinel
    assert p.base[f] == (new_s, new_n)


edits = st.lists(
    st.one_of(
        st.tuples(st.just("sentinel"), st.sampled_from(FIELDS)).flatmap(
            lambda t: st.tuples(st.just(t[0]), st.just(t[1]), sentinel_values(t[1]))
        ),
        st.tuples(st.just("servicenow"), st.sampled_from(FIELDS)).flatmap(
            lambda t: st.tuples(st.just(t[0]), st.just(t[1]), snow_values(t[1]))
        ),
    ),
    min_size=1,
    max_size=25,
)


@PROFILE
@given(edits, policies)
def test_property_lossy_maps_never_oscillate(edit_list: list[tuple[str, str, str]], policy: Policy) -> None:
    s = side(severity="Informational", status="Active", owner=ALICE)
    n = snow_side(severity="3", status="3", owner=ALICE_ID)
    first = plan(None, s, n, policy)
    assert not first.writes
    base: Mapping[str, tuple[str, str]] = first.base
    pending: set[str] = set()
    for who, f, value in edit_list:
        if who == "sentinel":
            s = replace(s, values={**s.values, f: value})
        else:
            n = replace(n, values={**n.values, f: value})
        p = plan(base, s, n, policy)
        if not pending:
            # Only the edited field may move, and never back onto the side that was edited.
            assert set(p.to_snow) | set(p.to_sentinel) <= {f}
            assert not (p.to_sentinel if who == "sentinel" else p.to_snow)
            assert p.conflicts == ()
        s, n = apply(p, s, n)
        base = p.base
        pending = {u[0] for u in p.unmapped}
        for g in FIELDS:
            if g not in pending:
                assert equal_by_meaning(g, s.values[g], n.values[g], policy)
        assert_settled(plan(base, s, n, policy))
