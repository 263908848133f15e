"""Unit tests of the OData $filter / $orderby parser used by the Sentinel emulator (REFERENCE A.7)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.testing.emulators.odata import (
    Coll,
    Obj,
    ODataError,
    Prim,
    format_instant,
    parse_filter,
    parse_instant,
    parse_orderby,
    sort_items,
)
from agent.testing.emulators.sentinel import COMMENT_SCHEMA, INCIDENT_SCHEMA

S, DT, INT = Prim("string"), Prim("datetime"), Prim("int")
SCHEMA = Obj(
    {
        "name": S,
        "p": Obj(
            {
                "a": S,
                "b": S,
                "c": S,
                "n": INT,
                "t": DT,
                "labels": Coll(Obj({"labelName": S})),
                "tags": Coll(S),
            }
        ),
    }
)


def item(**props: Any) -> dict[str, Any]:
    return {"name": "x", "p": props}


# --- precedence and grouping ------------------------------------------------------------------


def test_and_binds_tighter_than_or() -> None:
    f = parse_filter("p/a eq '1' or p/b eq '1' and p/c eq '1'", SCHEMA)
    assert str(f.expr) == "((p/a eq '1') or ((p/b eq '1') and (p/c eq '1')))"
    # a is true, b and c false: "a or (b and c)" is true, "(a or b) and c" would be false.
    assert f(item(a="1", b="0", c="0"))


def test_not_binds_tighter_than_and() -> None:
    f = parse_filter("not contains(p/a, 'x') and p/b eq '1'", SCHEMA)
    assert str(f.expr) == "((not contains(p/a, 'x')) and (p/b eq '1'))"
    assert f(item(a="y", b="1"))
    assert not f(item(a="x", b="1"))
    assert not f(item(a="y", b="0"))


def test_not_applies_to_the_unary_operand_not_the_comparison() -> None:
    # OData precedence: "not p/a eq 'x'" is "(not p/a) eq 'x'", a type error for a string.
    with pytest.raises(ODataError, match="'not' must be a Boolean"):
        parse_filter("not p/a eq 'x'", SCHEMA)
    assert parse_filter("not (p/a eq 'x')", SCHEMA)(item(a="y"))


def test_nested_parentheses_override_precedence() -> None:
    f = parse_filter("((p/a eq '1' or (p/b eq '1')) and ((p/c eq '1')))", SCHEMA)
    assert str(f.expr) == "(((p/a eq '1') or (p/b eq '1')) and (p/c eq '1'))"
    assert not f(item(a="1", b="0", c="0"))
    assert f(item(a="0", b="1", c="1"))


def test_or_chains_are_left_associative() -> None:
    f = parse_filter("p/a eq '1' or p/a eq '2' or p/a eq '3'", SCHEMA)
    assert str(f.expr) == "(((p/a eq '1') or (p/a eq '2')) or (p/a eq '3'))"
    assert [f(item(a=v)) for v in "1234"] == [True, True, True, False]


# --- literals ---------------------------------------------------------------------------------


def test_doubled_quote_in_a_string_is_one_quote() -> None:
    f = parse_filter("p/a eq 'O''Brien'''", SCHEMA)
    assert f.expr.args[1].value == "O'Brien'"
    assert f(item(a="O'Brien'"))
    assert not f(item(a="O''Brien''"))


def test_empty_string_literal() -> None:
    assert parse_filter("p/a eq ''", SCHEMA)(item(a=""))


def test_string_may_contain_keywords_and_punctuation() -> None:
    f = parse_filter("p/a eq 'a eq b or (c) / d, e: f'", SCHEMA)
    assert f(item(a="a eq b or (c) / d, e: f"))


def test_null_true_false_and_integers() -> None:
    assert parse_filter("p/a eq null", SCHEMA)(item(b="1"))
    assert not parse_filter("p/a eq null", SCHEMA)(item(a="1"))
    assert parse_filter("p/a ne null", SCHEMA)(item(a="1"))
    assert parse_filter("p/n ge 3 and p/n lt 5", SCHEMA)(item(n=4))
    assert not parse_filter("p/n gt -1", SCHEMA)(item(n=-1))
    assert parse_filter("contains(p/a, 'x') eq true", SCHEMA)(item(a="x"))
    assert parse_filter("contains(p/a, 'x') eq false", SCHEMA)(item(a="y"))


# --- datetimes --------------------------------------------------------------------------------


def test_datetime_compares_at_100ns_precision_not_as_strings() -> None:
    stored = item(t="2024-05-22T10:09:26.1234567Z")
    assert parse_filter("p/t gt 2024-05-22T10:09:26.123456Z", SCHEMA)(stored)
    assert not parse_filter("p/t gt 2024-05-22T10:09:26.1234567Z", SCHEMA)(stored)
    assert parse_filter("p/t ge 2024-05-22T10:09:26.1234567Z", SCHEMA)(stored)
    assert parse_filter("p/t eq 2024-05-22T10:09:26.1234567Z", SCHEMA)(stored)
    assert parse_filter("p/t lt 2024-05-22T10:09:26.1234568Z", SCHEMA)(stored)
    # Compared as strings, "...26Z" and "...26.123456Z" sort after "...26.1234567Z" ('Z' > '.'
    # and 'Z' > '7') although both are earlier instants.
    assert parse_filter("p/t gt 2024-05-22T10:09:26Z", SCHEMA)(stored)
    assert not parse_filter("p/t gt 2024-05-22T10:09:26.2Z", SCHEMA)(stored)


def test_datetime_literal_with_0_to_7_fraction_digits_and_offsets() -> None:
    stored = item(t="2024-01-01T00:00:00.0000000Z")
    for literal in (
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00Z",
        "2024-01-01T00:00:00.0Z",
        "2024-01-01T00:00:00.000Z",
        "2024-01-01T00:00:00.0000000Z",
        "2024-01-01T02:00:00+02:00",
        "2023-12-31T19:00:00-05:00",
    ):
        assert parse_filter(f"p/t eq {literal}", SCHEMA)(stored), literal


def test_datetime_with_more_than_7_fraction_digits_is_rejected() -> None:
    with pytest.raises(ODataError, match="invalid datetime literal"):
        parse_filter("p/t gt 2024-01-01T00:00:00.12345678Z", SCHEMA)


@pytest.mark.parametrize(
    "literal", ["2024-01-01", "2024-01-01T00:00:00", "2024-13-01T00:00:00Z", "2024-01-01T00:00:00z"]
)
def test_datetime_literal_needs_a_valid_date_time_and_offset(literal: str) -> None:
    with pytest.raises(ODataError, match="invalid datetime literal"):
        parse_filter(f"p/t gt {literal}", SCHEMA)


def test_quoted_datetime_is_a_type_error_against_a_datetime_property() -> None:
    with pytest.raises(ODataError, match="incompatible operand types datetime and string"):
        parse_filter("p/t gt '2024-01-01T00:00:00Z'", SCHEMA)


def test_unparseable_stored_timestamp_matches_nothing() -> None:
    for op in ("eq", "ne", "gt", "lt"):
        assert not parse_filter(f"p/t {op} 2024-01-01T00:00:00Z", SCHEMA)(item(t="yesterday")), op


@given(st.integers(min_value=0, max_value=253_402_300_799 * 10_000_000))
def test_instant_round_trip(ticks: int) -> None:
    assert parse_instant(format_instant(ticks)) == ticks


def test_parse_instant_examples() -> None:
    assert parse_instant("1970-01-01T00:00:00Z") == 0
    assert parse_instant("1970-01-01T00:00:00.0000001Z") == 1
    assert parse_instant("1970-01-01T01:00:00+01:00") == 0
    assert parse_instant("1970-01-01T00:00:00") is None
    assert format_instant(10_000_001) == "1970-01-01T00:00:01.0000001Z"


# --- functions and lambdas --------------------------------------------------------------------


def test_any_with_any_lambda_variable_name() -> None:
    labelled = item(labels=[{"labelName": "other"}, {"labelName": "snow"}])
    for var in ("i", "x", "item", "lbl"):
        f = parse_filter(f"p/labels/any({var}:{var}/labelName eq 'snow')", SCHEMA)
        assert f(labelled)
        assert not f(item(labels=[{"labelName": "Snow"}]))  # values are case-sensitive
        assert not f(item(labels=[]))
        assert not f(item())


def test_any_with_contains_tolower_and_toLower() -> None:
    for fn in ("toLower", "tolower", "TOLOWER"):
        f = parse_filter(f"p/labels/any(item: contains({fn}(item/labelName), 'sync'))", SCHEMA)
        assert f(item(labels=[{"labelName": "SNOW-Sync"}]))
        assert not f(item(labels=[{"labelName": "other"}]))


def test_all_and_empty_any_and_primitive_collections() -> None:
    assert parse_filter("p/tags/any()", SCHEMA)(item(tags=["a"]))
    assert not parse_filter("p/tags/any()", SCHEMA)(item(tags=[]))
    assert parse_filter("p/tags/all(t: startswith(t, 'a'))", SCHEMA)(item(tags=["ab", "ac"]))
    assert not parse_filter("p/tags/all(t: startswith(t, 'a'))", SCHEMA)(item(tags=["ab", "b"]))


def test_lambda_body_can_refer_to_the_resource() -> None:
    f = parse_filter("p/labels/any(l: l/labelName eq p/a)", SCHEMA)
    assert f(item(a="k", labels=[{"labelName": "k"}]))
    assert not f(item(a="j", labels=[{"labelName": "k"}]))


def test_string_functions() -> None:
    row = item(a="Hello World")
    assert parse_filter("contains(p/a, 'lo W')", SCHEMA)(row)
    assert parse_filter("startswith(p/a, 'Hell')", SCHEMA)(row)
    assert parse_filter("endswith(p/a, 'World')", SCHEMA)(row)
    assert not parse_filter("contains(p/a, 'world')", SCHEMA)(row)
    assert parse_filter("toupper(p/a) eq 'HELLO WORLD'", SCHEMA)(row)
    assert not parse_filter("contains(p/a, 'x')", SCHEMA)(item())  # null propagates to false


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("p/a eq", "unexpected"),
        ("p/a eq 'x", "unterminated string"),
        ("p/a eq 'x' and", "unexpected"),
        ("(p/a eq 'x'", "expected ')'"),
        ("p/a eq 'x')", "unexpected ')'"),
        ("p/a = 'x'", "unexpected character '='"),
        ('p/a eq "x"', "unexpected character"),
        ("p/a eq 'x' p/b eq 'y'", "unexpected"),
        ("substringof('x', p/a)", "unknown function 'substringof'"),
        ("contains(p/a)", "takes 2 argument"),
        ("contains(p/n, 'x')", "expects a string argument"),
        ("p/nope eq 'x'", "could not find a property named 'nope'"),
        ("P/a eq 'x'", "could not find a property named 'P'"),
        ("p/labels/labelName eq 'x'", "is a collection"),
        ("p/labels eq 'x'", "cannot compare the collection"),
        ("p/a eq 1", "incompatible operand types string and int"),
        ("p/a", "must be a Boolean expression"),
        ("p/a eq 'x' and p/b", "must be a Boolean expression"),
        ("p/a/any(x: x eq 'y')", "needs a collection"),
        ("p/labels/any(x x/labelName eq 'y')", "expected ':'"),
        ("p/labels/all()", "'all' needs a lambda"),
        ("p/labels/any(x: x/labelName)", "must be a Boolean"),
        ("p/a eq 'x' & p/b eq 'y'", "unexpected character '&'"),
    ],
)
def test_invalid_filters_are_rejected_with_a_message(text: str, message: str) -> None:
    with pytest.raises(ODataError, match=re.escape(message)):
        parse_filter(text, SCHEMA)


def test_error_reports_the_position() -> None:
    with pytest.raises(ODataError, match="unknown function 'foo' at position 15") as info:
        parse_filter("p/a eq 'x' and foo(1)", SCHEMA)
    assert info.value.position == 15


def test_untyped_mode_infers_datetimes_from_the_literal() -> None:
    f = parse_filter("a/b gt 2024-01-01T00:00:00Z and anything eq 'x'")
    assert f({"a": {"b": "2024-01-01T00:00:00.0000001Z"}, "anything": "x"})
    assert not f({"a": {"b": "2023-12-31T23:59:59.9999999Z"}, "anything": "x"})


def test_references_reports_root_paths_only() -> None:
    f = parse_filter("name eq 'x' or p/labels/any(n: n/labelName eq 'y')", SCHEMA)
    assert f.references("name")
    assert f.references("p", "labels")
    assert not f.references("labelName")
    assert not parse_filter("p/a eq 'name'", SCHEMA).references("name")


def test_incident_and_comment_schemas_accept_the_documented_filters() -> None:
    # The forms REFERENCE A.7 lists as used against the real service.
    for text in (
        "properties/lastModifiedTimeUtc gt 2024-01-01T00:00:00.000Z",
        "(properties/lastModifiedTimeUtc gt 2024-01-01T00:00:00.000Z)",
        "properties/createdTimeUtc ge 2024-01-01T00:00:00Z"
        " and properties/createdTimeUtc lt 2024-02-01T00:00:00Z",
        "properties/labels/any(i:i/labelName eq 'snow')",
        "properties/labels/any(item: contains(toLower(item/labelName), 'x'))",
        "properties/status eq 'New' or properties/status ne 'Closed'",
        "properties/severity eq 'High'",
        "contains(properties/title, 'MSTICPy')",
        "properties/owner/assignedTo eq 'Name'",
        "properties/additionalData/alertsCount gt 0",
        "properties/additionalData/tactics/any(t: t eq 'Persistence')",
    ):
        parse_filter(text, INCIDENT_SCHEMA)
    parse_filter("(properties/createdTimeUtc gt 2024-05-22T10:09:26Z)", COMMENT_SCHEMA)
    with pytest.raises(ODataError, match="could not find a property named 'title'"):
        parse_filter("properties/title eq 'x'", COMMENT_SCHEMA)


# --- orderby ----------------------------------------------------------------------------------


def test_orderby_parses_paths_and_directions() -> None:
    keys = parse_orderby("p/n desc, p/a,p/t asc", SCHEMA)
    assert [(k.path, k.descending, k.typ) for k in keys] == [
        (("p", "n"), True, "int"),
        (("p", "a"), False, "string"),
        (("p", "t"), False, "datetime"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the orderby expression is empty"),
        ("p/a up", "syntax error: expected ','"),
        ("p/a desc,", "syntax error: expected a property path"),
        ("p/labels", "cannot order by 'p/labels'"),
        ("p/nope", "could not find a property named 'nope'"),
        ("p", "cannot order by 'p'"),
        ("tolower(p/a)", "could not find a property named 'tolower'"),
        ("p/a desc p/b", "syntax error: expected ','"),
    ],
)
def test_invalid_orderby_is_rejected(text: str, expected: str) -> None:
    with pytest.raises(ODataError, match=expected):
        parse_orderby(text, SCHEMA)


def test_sort_items_multi_key_nulls_first_and_datetimes_as_instants() -> None:
    rows = [
        {"name": "r1", "p": {"n": 1, "t": "2024-01-01T00:00:00.5000000Z"}},
        {"name": "r2", "p": {"n": 2, "t": "2024-01-01T00:00:00Z"}},
        {"name": "r3", "p": {"n": 1, "t": "2024-01-01T00:00:00.0000001Z"}},
        {"name": "r4", "p": {"t": "2024-01-01T00:00:00.0000002Z"}},
    ]
    ordered = sort_items(rows, parse_orderby("p/n desc, p/t asc", SCHEMA))
    assert [r["name"] for r in ordered] == ["r2", "r3", "r1", "r4"]
    ordered = sort_items(rows, parse_orderby("p/n, p/t desc", SCHEMA))
    assert [r["name"] for r in ordered] == ["r4", "r1", "r3", "r2"]


def test_sort_items_tiebreak_makes_order_total() -> None:
    rows = [{"name": n, "p": {"n": 1}} for n in "dbca"]
    ordered = sort_items(rows, parse_orderby("p/n", SCHEMA), tiebreak=lambda r: r["name"])
    assert [r["name"] for r in ordered] == ["a", "b", "c", "d"]
