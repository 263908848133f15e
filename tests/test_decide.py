"""The record-level decision table (agent.core.decide): one test per row, named after it, and the
order in which rows are tried."""

from __future__ import annotations

import itertools
from dataclasses import fields, replace

from agent.core.decide import Decision, Facts, Row, decide, row

LINKED = Facts(linked=True)
UNLINKED_PAIR = Facts(linked=False)


def test_unlinked() -> None:
    # An operator unlinked the incident: never created or adopted again, whatever else holds.
    for facts in (replace(UNLINKED_PAIR, wanted=True), replace(UNLINKED_PAIR, wanted=True, found=True)):
        facts = replace(facts, unlinked=True)
        assert (row(facts), decide(facts)) == (Row.UNLINKED, Decision.SKIP)


def test_backoff() -> None:
    for facts in (replace(LINKED, backoff=True), replace(UNLINKED_PAIR, wanted=True, backoff=True)):
        assert (row(facts), decide(facts)) == (Row.BACKOFF, Decision.SKIP)


def test_unchanged() -> None:
    facts = replace(LINKED, unchanged=True)
    assert (row(facts), decide(facts)) == (Row.UNCHANGED, Decision.SKIP)


def test_incomplete() -> None:
    for facts in (replace(LINKED, has_incident=False), replace(LINKED, has_ticket=False)):
        assert (row(facts), decide(facts)) == (Row.INCOMPLETE, Decision.SKIP)


def test_follow_up() -> None:
    facts = replace(LINKED, read_only=True, reopens=True, follow_up=True)
    assert (row(facts), decide(facts)) == (Row.FOLLOW_UP, Decision.FOLLOW_UP)


def test_update() -> None:
    assert (row(LINKED), decide(LINKED)) == (Row.UPDATE, Decision.UPDATE)
    # A read-only ticket the plan does not reopen, or reopen_closed = note: an update whose
    # ticket writes are given up, never a follow-up.
    for facts in (
        replace(LINKED, read_only=True, follow_up=True),
        replace(LINKED, read_only=True, reopens=True),
        replace(LINKED, reopens=True, follow_up=True),
    ):
        assert (row(facts), decide(facts)) == (Row.UPDATE, Decision.UPDATE)


def test_adopt() -> None:
    for facts in (
        replace(UNLINKED_PAIR, wanted=True, found=True),
        replace(UNLINKED_PAIR, may_own=True, found=True),
    ):
        assert (row(facts), decide(facts)) == (Row.ADOPT, Decision.ADOPT)


def test_create() -> None:
    facts = replace(UNLINKED_PAIR, wanted=True)
    assert (row(facts), decide(facts)) == (Row.CREATE, Decision.CREATE)


def test_not_ours() -> None:
    # Neither wanted nor possibly owning a ticket; or possibly owning one that does not exist;
    # a ticket carrying the key of an incident that is neither is not adopted either.
    for facts in (UNLINKED_PAIR, replace(UNLINKED_PAIR, may_own=True), replace(UNLINKED_PAIR, found=True)):
        assert (row(facts), decide(facts)) == (Row.NOT_OURS, Decision.SKIP)


def test_every_combination_lands_on_exactly_one_row_and_rows_keep_their_order() -> None:
    """Over every combination of facts: a tombstone and a backoff always win, a linked pair never
    creates or adopts, an unlinked one never updates or follows up, and every row is reachable."""
    names = [f.name for f in fields(Facts)]
    seen: set[Row] = set()
    for values in itertools.product((False, True), repeat=len(names)):
        facts = Facts(**dict(zip(names, values, strict=True)))
        r = row(facts)
        seen.add(r)
        if facts.unlinked:
            assert r is Row.UNLINKED
        elif facts.backoff:
            assert r is Row.BACKOFF
        elif facts.linked:
            assert decide(facts) in (Decision.UPDATE, Decision.FOLLOW_UP, Decision.SKIP)
        else:
            assert decide(facts) in (Decision.CREATE, Decision.ADOPT, Decision.SKIP)
    assert seen == set(Row)
