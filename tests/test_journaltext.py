"""Reading journal entries from a record's display value (REFERENCE E.6), pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.connectors.servicenow.journaltext import DISPLAY_KEY, UserClock, keyed, learn, parse

RAW = datetime(2026, 3, 4, 17, 5, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    ("shown", "fmt", "offset"),
    [
        ("2026-03-04 17:05:09", "%Y-%m-%d %H:%M:%S", timedelta()),
        ("2026-03-04 09:05:09", "%Y-%m-%d %H:%M:%S", timedelta(hours=-8)),
        ("04.03.2026 10:35:09 PM", "%d.%m.%Y %I:%M:%S %p", timedelta(hours=5, minutes=30)),
        ("04/03/2026 12:05:09", "%d/%m/%Y %H:%M:%S", timedelta(hours=-5)),
        ("03/04/2026 12:05:09", "%m/%d/%Y %H:%M:%S", timedelta(hours=-5)),
    ],
)
def test_e6_the_users_format_and_offset_are_learnt_from_one_known_time(
    shown: str, fmt: str, offset: timedelta
) -> None:
    assert learn([(RAW, shown)]) == UserClock(fmt, offset)


def test_e6_an_ambiguous_day_is_settled_by_a_second_sample() -> None:
    # 03/03 reads the same both ways (dd/MM wins alone); 04/13 only as MM/dd
    march = datetime(2026, 3, 3, 8, 0, 0, tzinfo=UTC)
    april = datetime(2026, 4, 13, 8, 0, 0, tzinfo=UTC)
    assert learn([(march, "03/03/2026 08:00:00")]) == UserClock("%d/%m/%Y %H:%M:%S", timedelta())
    assert learn([(march, "03/03/2026 08:00:00"), (april, "04/13/2026 08:00:00")]) == UserClock(
        "%m/%d/%Y %H:%M:%S", timedelta()
    )
    assert learn([(RAW, "not a date")]) is None


def test_e6_entries_are_parsed_oldest_first_with_texts_that_look_like_headers() -> None:
    clock = UserClock("%Y-%m-%d %H:%M:%S", timedelta(hours=-8))
    text = (
        "2026-03-04 09:10:00 - Bob Hunter (Work notes)\nsecond\n\nstill the second (really)\n\n"
        "2026-03-04 09:05:00 - System Administrator (Work notes)\nfirst line\n"
        "a line - like a header (Work notes)\n\n"
    )
    entries = parse(text, clock)
    assert [(e.author, e.text) for e in entries] == [
        ("System Administrator", "first line\na line - like a header (Work notes)"),
        ("Bob Hunter", "second\n\nstill the second (really)"),
    ]
    assert entries[0].created_on == datetime(2026, 3, 4, 17, 5, 0, tzinfo=UTC)


def test_e6_keys_are_stable_and_tell_equal_texts_apart() -> None:
    clock = UserClock("%Y-%m-%d %H:%M:%S", timedelta())
    one = parse("2026-03-04 10:00:00 - A (Work notes)\nok\n\n", clock)
    two = parse(
        "2026-03-04 11:00:00 - B (Work notes)\nok\n\n2026-03-04 10:00:00 - A (Work notes)\nok\n\n", clock
    )
    first = keyed("incident", "abc", "work_notes", one)
    both = keyed("incident", "abc", "work_notes", two)
    assert first[0][0] == both[0][0] and both[0][0] != both[1][0]  # growth keeps the old key
    assert all(key.startswith(DISPLAY_KEY) for key, _ in both)
    assert keyed("incident", "abc", "comments", one)[0][0] != first[0][0]
