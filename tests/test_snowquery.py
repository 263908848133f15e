"""The encoded-query builder: escaping, validation and combination (REFERENCE C.3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.connectors.servicenow.query import Q, encode_value, field_name
from agent.testing.emulators.encoded_query import parse

INJECTION = "x^ORDERBYsys_id^NQactive=true"


def test_conditions_render_with_their_operators() -> None:
    assert str(Q.eq("state", "2")) == "state=2"
    assert str(Q.ne("state", 7)) == "state!=7"
    assert str(Q.gt("sys_mod_count", 3)) == "sys_mod_count>3"
    assert str(Q.ge("a", "1")) == "a>=1"
    assert str(Q.lt("a", "1")) == "a<1"
    assert str(Q.le("a", "1")) == "a<=1"
    assert str(Q.like("short_description", "disk")) == "short_descriptionLIKEdisk"
    assert str(Q.startswith("number", "INC")) == "numberSTARTSWITHINC"
    assert str(Q.in_("state", ["1", "2", 3])) == "stateIN1,2,3"
    assert str(Q.is_empty("correlation_id")) == "correlation_idISEMPTY"
    assert str(Q.is_not_empty("caller_id.email")) == "caller_id.emailISNOTEMPTY"
    assert str(Q.eq("active", True)) == "active=true"
    assert str(Q.eq("active", False)) == "active=false"


def test_and_or_and_ordering() -> None:
    q = (Q.eq("a", "1") | Q.eq("b", "2")) & Q.eq("c", "3")
    assert str(q.order_by("sys_updated_on").order_by("number", desc=True)) == (
        "a=1^ORb=2^c=3^ORDERBYsys_updated_on^ORDERBYDESCnumber"
    )
    assert str(Q.eq("a", "1") | Q.eq("b", "2") | Q.eq("c", "3")) == "a=1^ORb=2^ORc=3"
    assert str(Q() & Q.eq("a", "1")) == "a=1"
    assert str(Q().order_by("sys_id")) == "ORDERBYsys_id"
    assert not Q()
    assert Q.eq("a", "1")


def test_or_only_joins_single_conditions() -> None:
    both = Q.eq("a", "1") & Q.eq("b", "2")
    with pytest.raises(ValueError, match="single conditions"):
        _ = both | Q.eq("c", "3")
    with pytest.raises(ValueError, match="single conditions"):
        _ = Q.eq("c", "3") | both
    with pytest.raises(ValueError, match="single conditions"):
        _ = Q.eq("c", "3").order_by("sys_id") | Q.eq("d", "4")


def test_caret_is_doubled_so_the_value_stays_one_term() -> None:
    q = Q.eq("short_description", INJECTION)
    assert str(q) == "short_description=x^^ORDERBYsys_id^^NQactive=true"
    parsed = parse(str(q))
    assert len(parsed.groups) == 1
    assert parsed.order == ()
    (cond,) = parsed.conditions()
    assert (cond.field, cond.operator, cond.value) == ("short_description", "=", INJECTION)
    # The unescaped string is exactly what the builder prevents: three terms, two groups.
    raw = parse("short_description=" + INJECTION)
    assert len(raw.groups) == 2 and raw.order


def test_values_that_cannot_be_escaped_are_rejected() -> None:
    for bad in ("a\nb", "a\rb", "line\r\n"):
        with pytest.raises(ValueError, match="line break"):
            Q.eq("short_description", bad)
    with pytest.raises(ValueError, match="javascript"):
        Q.eq("caller_id", "javascript:gs.getUserID()")
    with pytest.raises(ValueError, match="javascript"):
        Q.eq("caller_id", "  JavaScript :gs.getUserID()")
    with pytest.raises(ValueError, match="','"):
        Q.in_("number", ["INC1", "INC2,INC3"])
    with pytest.raises(ValueError, match="empty IN"):
        Q.in_("number", [])
    with pytest.raises(ValueError, match="empty value"):
        Q.eq("correlation_id", "")
    with pytest.raises(TypeError, match="unsupported ServiceNow query value type: float"):
        Q.eq("a", 1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["", "State", "state^ORactive", "a=b", "sys id", "x;drop", "a\nb", "ORDERBYx^", "ünïcode"]
)
def test_field_names_are_validated(name: str) -> None:
    with pytest.raises(ValueError, match="field name"):
        Q.eq(name, "1")
    with pytest.raises(ValueError, match="field name"):
        Q().order_by(name)


def test_good_field_names() -> None:
    for name in ("state", "u_custom_2", "caller_id.email", "sys_id"):
        assert field_name(name) == name


def test_datetimes_are_utc_and_must_be_aware() -> None:
    cet = timezone(timedelta(hours=1))
    assert encode_value(datetime(2024, 5, 1, 12, 30, 5, 999, tzinfo=cet)) == "2024-05-01 11:30:05"
    assert str(Q.ge("sys_updated_on", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))) == (
        "sys_updated_on>=2024-01-02 03:04:05"
    )
    with pytest.raises(ValueError, match="naive"):
        Q.ge("sys_updated_on", datetime(2024, 1, 2))


def test_in_values_are_escaped_too() -> None:
    q = Q.in_("short_description", ["a^b", "c"])
    assert str(q) == "short_descriptionINa^^b,c"
    (cond,) = parse(str(q)).conditions()
    assert cond.value == "a^b,c"


safe_text = st.text(min_size=1).filter(
    lambda s: "\n" not in s and "\r" not in s and not s.lstrip().lower().startswith("javascript")
)


@given(value=safe_text, other=safe_text)
def test_any_value_round_trips_as_exactly_one_condition(value: str, other: str) -> None:
    q = (Q.eq("short_description", value) & Q.like("description", other)).order_by("sys_id")
    parsed = parse(str(q))
    assert len(parsed.groups) == 1
    assert [(c.field, c.operator, c.value) for c in parsed.conditions()] == [
        ("short_description", "=", value),
        ("description", "LIKE", other),
    ]
    assert [(k.field, k.descending) for k in parsed.order] == [("sys_id", False)]


def test_either_builds_new_query_groups() -> None:
    a = Q.eq("active", True) & Q.gt("sys_updated_on", datetime(2024, 1, 1, tzinfo=UTC))
    b = Q.eq("active", True) & Q.eq("sys_updated_on", datetime(2024, 1, 1, tzinfo=UTC)) & Q.gt("sys_id", "ab")
    q = Q.either(a, b).order_by("sys_updated_on").order_by("sys_id")
    assert str(q) == (
        "active=true^sys_updated_on>2024-01-01 00:00:00^NQactive=true^sys_updated_on=2024-01-01 00:00:00"
        "^sys_id>ab^ORDERBYsys_updated_on^ORDERBYsys_id"
    )
    parsed = parse(str(q))
    assert len(parsed.groups) == 2 and len(parsed.order) == 2
    assert str(Q.either(Q.either(Q.eq("a", "1"), Q.eq("b", "2")), Q.eq("c", "3"))) == "a=1^NQb=2^NQc=3"
    assert Q.either(a) == a
    with pytest.raises(ValueError, match="AND-ed"):
        _ = Q.either(a, b) & Q.eq("x", "1")
    with pytest.raises(ValueError, match="AND-ed"):
        _ = Q.eq("x", "1") & Q.either(a, b)
    with pytest.raises(ValueError, match="non-empty"):
        Q.either(a, Q())
    with pytest.raises(ValueError, match="non-empty"):
        Q.either(a, b.order_by("sys_id"))
    with pytest.raises(ValueError, match="at least one"):
        Q.either()
    with pytest.raises(ValueError, match="single conditions"):
        _ = Q.either(Q.eq("a", "1"), Q.eq("b", "2")) | Q.eq("c", "3")
