"""Our own writes in the listing window: counted once each, forgotten once the window passes
them, and room made for them on the listing's page (#18 item 5: idle means idle)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.connectors.own_writes import OwnWrites

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_record_written_twice_is_counted_once() -> None:
    own = OwnWrites()
    own.add("a", T0)
    own.add("a", T0 + timedelta(seconds=5))  # the label PUT after the fields PUT
    own.add("b", T0 + timedelta(seconds=1))
    assert own.since(T0) == 2
    assert own.since(None) == 2


def test_writes_before_the_window_are_not_counted_and_are_forgotten() -> None:
    own = OwnWrites()
    own.add("a", T0)
    own.add("b", T0 + timedelta(seconds=10))
    assert own.since(T0 + timedelta(seconds=5)) == 1
    assert own.since(T0 - timedelta(seconds=5)) == 1  # "a" is gone for good
    own.add("a", T0 - timedelta(seconds=60))  # an older time never replaces a newer one
    own.add("b", T0)
    assert own.since(T0 + timedelta(seconds=10)) == 1


def test_the_page_holds_our_writes_and_a_regular_page_within_the_maximum() -> None:
    own = OwnWrites()
    assert own.page(200, T0, 1000) == 200
    for i in range(500):
        own.add(str(i), T0 + timedelta(milliseconds=i))
    assert own.page(200, T0, 1000) == 700
    assert own.page(200, T0 + timedelta(milliseconds=400), 1000) == 300
    for i in range(2000):
        own.add(f"x{i}", T0 + timedelta(seconds=1))
    assert own.page(200, T0, 1000) == 1000
