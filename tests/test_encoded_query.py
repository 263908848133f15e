"""The encoded-query parser and evaluator (REFERENCE C.3), without any server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.testing.emulators.encoded_query import (
    DATETIME,
    INTEGER,
    STRING,
    Condition,
    EncodedQuery,
    MappingSchema,
    OrderKey,
    bind,
    escape,
    parse,
    parse_condition,
    select,
    split_terms,
)

SCHEMA = MappingSchema(
    {
        "name": STRING,
        "number": STRING,
        "active": STRING,
        "state": INTEGER,
        "sys_mod_count": INTEGER,
        "sys_updated_on": DATETIME,
        "assigned_to": STRING,
        "short_description": STRING,
        "caller_id": STRING,
    }
)


def row(**fields: str) -> dict[str, str]:
    base = {name: "" for name in SCHEMA.kinds}
    base.update(fields)
    return base


ROWS = [
    row(
        name="a",
        number="INC1",
        active="true",
        state="1",
        sys_mod_count="9",
        sys_updated_on="2024-01-01 10:00:00",
    ),
    row(
        name="b",
        number="INC2",
        active="true",
        state="2",
        sys_mod_count="10",
        sys_updated_on="2024-01-02 10:00:00",
    ),
    row(
        name="c",
        number="INC3",
        active="false",
        state="7",
        sys_mod_count="2",
        sys_updated_on="2024-01-03 10:00:00",
    ),
    row(name="d", number="INC4", active="false", state="10", sys_mod_count="", assigned_to="u1"),
]


def names(query: str, rows: list[dict[str, str]] | None = None) -> list[str]:
    return [r["name"] for r in select(query, ROWS if rows is None else rows, SCHEMA)]


# --- tokenising -----------------------------------------------------------------------------


def test_split_on_single_caret_and_unescape_double() -> None:
    assert split_terms("a=1^b=2") == ["a=1", "b=2"]
    assert split_terms("a=x^^y^b=2") == ["a=x^y", "b=2"]
    assert split_terms("a=x^^^b=2") == ["a=x^", "b=2"]
    assert split_terms("") == [""]


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("state=1", Condition("state", "=", "1")),
        ("state!=1", Condition("state", "!=", "1")),
        ("state>1", Condition("state", ">", "1")),
        ("state>=1", Condition("state", ">=", "1")),
        ("state<1", Condition("state", "<", "1")),
        ("state<=1", Condition("state", "<=", "1")),
        ("nameLIKEab", Condition("name", "LIKE", "ab")),
        ("nameNOT LIKEab", Condition("name", "NOT LIKE", "ab")),
        ("nameSTARTSWITHab", Condition("name", "STARTSWITH", "ab")),
        ("nameENDSWITHab", Condition("name", "ENDSWITH", "ab")),
        ("stateIN1,2", Condition("state", "IN", "1,2")),
        ("stateNOT IN1,2", Condition("state", "NOT IN", "1,2")),
        ("nameISEMPTY", Condition("name", "ISEMPTY", "")),
        ("nameISNOTEMPTY", Condition("name", "ISNOTEMPTY", "")),
        ("nameANYTHING", Condition("name", "ANYTHING", "")),
        ("nameEMPTYSTRING", Condition("name", "EMPTYSTRING", "")),
        ("stateBETWEEN1@3", Condition("state", "BETWEEN", "1@3")),
        ("nameSAMEASnumber", Condition("name", "SAMEAS", "number")),
        ("caller_id.email=x@y", Condition("caller_id.email", "=", "x@y")),
        ("short_description=a=b<c", Condition("short_description", "=", "a=b<c")),
    ],
)
def test_condition_operators_parse(term: str, expected: Condition) -> None:
    assert parse_condition(term) == expected


def test_garbage_term_is_kept_as_invalid_placeholder() -> None:
    cond = parse_condition("nonsense")
    assert not cond.valid
    assert parse_condition("state=1").valid


def test_structure_and_or_nq_order() -> None:
    q = parse("a=1^b=2^ORc=3^NQd=4^ORDERBYnumber^ORDERBYDESCstate")
    assert q == EncodedQuery(
        groups=(
            ((Condition("a", "=", "1"),), (Condition("b", "=", "2"), Condition("c", "=", "3"))),
            ((Condition("d", "=", "4"),),),
        ),
        order=(OrderKey("number"), OrderKey("state", True)),
    )


def test_eq_terminator_and_empty_terms_are_skipped() -> None:
    assert parse("state=1^EQ") == parse("state=1")
    assert parse("^state=1^") == parse("state=1")


# --- precedence -----------------------------------------------------------------------------


def test_or_binds_to_neighbours_tighter_than_and() -> None:
    # active=false AND (state=1 OR state=7): only c
    assert names("active=false^state=1^ORstate=7") == ["c"]
    # (state=1 OR state=7) AND active=false: only c again, the OR does not escape its clause
    assert names("state=1^ORstate=7^active=false") == ["c"]
    # chained ORs form one clause
    assert names("state=1^ORstate=2^ORstate=7^active=true") == ["a", "b"]


def test_nq_is_or_of_whole_groups() -> None:
    # (active=true AND state=2) OR (active=false AND state=10)
    assert names("active=true^state=2^NQactive=false^state=10") == ["b", "d"]
    # without NQ the same terms match nothing
    assert names("active=true^state=2^active=false^state=10") == []


def test_empty_query_matches_everything_in_input_order() -> None:
    assert names("") == ["a", "b", "c", "d"]


# --- operators ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=2", ["b"]),
        ("state=02", ["b"]),  # integers compare numerically
        ("state!=2", ["a", "c", "d"]),
        ("state>2", ["c", "d"]),  # 10 > 2 numerically, not as text
        ("state>=7", ["c", "d"]),
        ("state<7", ["a", "b"]),
        ("state<=2", ["a", "b"]),
        ("numberLIKENC", ["a", "b", "c", "d"]),
        ("numberLIKE3", ["c"]),
        ("numberNOT LIKE3", ["a", "b", "d"]),
        ("numberSTARTSWITHINC", ["a", "b", "c", "d"]),
        ("numberSTARTSWITHNC", []),
        ("numberENDSWITH4", ["d"]),
        ("stateIN1,7", ["a", "c"]),
        ("stateNOT IN1,7", ["b", "d"]),
        ("assigned_toISEMPTY", ["a", "b", "c"]),
        ("assigned_toISNOTEMPTY", ["d"]),
        ("assigned_toEMPTYSTRING", ["a", "b", "c"]),
        ("assigned_toANYTHING", ["a", "b", "c", "d"]),
        ("stateBETWEEN2@7", ["b", "c"]),
        ("sys_mod_countBETWEEN9@10", ["a", "b"]),
        ("sys_mod_count>5", ["a", "b"]),  # "10" > "5" only numerically; empty never compares
        ("assigned_to=", ["a", "b", "c"]),
        ("assigned_to!=", ["d"]),
    ],
)
def test_each_operator(query: str, expected: list[str]) -> None:
    assert names(query) == expected


def test_negative_operators_skip_empty_values() -> None:
    # The database compares NULL as unknown, so "is not" never returns empty fields.
    assert names("assigned_to!=u2") == ["d"]
    assert names("assigned_toNOT INu2,u3") == ["d"]
    assert names("assigned_toNOT LIKEzz") == ["d"]


def test_sameas_compares_two_fields() -> None:
    rows = [row(name="x", number="x"), row(name="y", number="z"), row(name="w", number="")]
    assert names("nameSAMEASnumber", rows) == ["x"]
    assert names("nameNSAMEASnumber", rows) == ["y"]


def test_datetimes_compare_as_instants() -> None:
    assert names("sys_updated_on>2024-01-01 10:00:00") == ["b", "c"]
    assert names("sys_updated_on>=2024-01-02") == ["b", "c"]
    assert names("sys_updated_on<2024-01-02 09:59:59") == ["a"]
    assert names("sys_updated_onBETWEEN2024-01-01 12:00:00@2024-01-03 10:00:00") == ["b", "c"]
    # A literal that is not a ServiceNow date-time compares with nothing.
    assert names("sys_updated_on>2024-01-01T10:00:00Z") == []


def test_values_and_names_are_case_sensitive() -> None:
    assert names("number=inc1") == []
    assert names("numberLIKEinc") == []
    assert names("number=INC1") == ["a"]
    # "Number" is not a field, so the condition is ignored, not matched case-insensitively.
    assert names("Number=INC1^state=2") == ["b"]


# --- ordering -------------------------------------------------------------------------------


def test_orderby_numeric_and_desc() -> None:
    assert names("ORDERBYstate") == ["a", "b", "c", "d"]
    assert names("ORDERBYDESCstate") == ["d", "c", "b", "a"]
    # sys_mod_count: empty first, then numeric (2 < 9 < 10), not text order
    assert names("ORDERBYsys_mod_count") == ["d", "c", "a", "b"]


def test_orderby_several_keys_and_stable_ties() -> None:
    rows = [
        row(name="r1", active="true", state="2"),
        row(name="r2", active="false", state="2"),
        row(name="r3", active="true", state="1"),
        row(name="r4", active="false", state="1"),
        row(name="r5", active="true", state="1"),
    ]
    assert names("ORDERBYactive^ORDERBYDESCstate", rows) == ["r2", "r4", "r1", "r3", "r5"]
    # ties keep insertion order, descending included
    assert names("ORDERBYDESCactive", rows) == ["r1", "r3", "r5", "r2", "r4"]


def test_orderby_anywhere_applies_to_whole_result() -> None:
    assert names("state=1^ORDERBYDESCname^NQstate=2") == ["b", "a"]


# --- unknown fields -------------------------------------------------------------------------


def test_unknown_fields_are_ignored_rest_kept() -> None:
    assert names("bogus=1^state=2") == ["b"]
    assert names("state=2^ORbogus=1") == ["b"]
    assert names("bogus=1^ORstate=2") == ["b"]
    assert names("state=1^ORDERBYbogus") == ["a"]
    # a query made only of unknown fields places no restriction
    assert names("bogus=1") == ["a", "b", "c", "d"]


def test_invalid_term_keeps_or_attachment() -> None:
    # garbage AND (bogus OR state=2): garbage and bogus drop, "state=2" still joins the right clause
    assert names("active=true^nonsense^ORstate=2") == ["b"]
    q = bind(parse("active=true^nonsense^ORstate=2"), SCHEMA)
    assert q.groups == (((Condition("active", "=", "true"),), (Condition("state", "=", "2"),)),)


# --- escaping and injection -----------------------------------------------------------------

INJECTION = "x^ORDERBYDESCsys_mod_count^NQactive=true"


def test_unescaped_caret_in_value_changes_the_query() -> None:
    rows = [*ROWS, row(name="e", short_description=INJECTION, active="false")]
    q = parse("short_description=" + INJECTION)
    assert q.order == (OrderKey("sys_mod_count", True),)
    assert len(q.groups) == 2
    # matches short_description=x (none) OR active=true, newest sys_mod_count first: the
    # injected terms widened the match (e is not returned, a and b are) and reordered it
    assert names("short_description=" + INJECTION, rows) == ["b", "a"]


def test_escaped_caret_in_value_is_literal() -> None:
    rows = [*ROWS, row(name="e", short_description=INJECTION, active="false")]
    q = parse("short_description=" + escape(INJECTION))
    assert q == EncodedQuery((((Condition("short_description", "=", INJECTION),),),), ())
    assert names("short_description=" + escape(INJECTION), rows) == ["e"]


@given(st.text(alphabet=st.sampled_from("ab^=ORNQ ,@<>!"), max_size=30))
def test_escape_round_trips_any_value(value: str) -> None:
    q = parse("short_description=" + escape(value) + "^ORDERBYname")
    assert q.groups == (((Condition("short_description", "=", value),),),)
    assert q.order == (OrderKey("name"),)
