"""ServiceNow encoded queries (``sysparm_query``), parsed and evaluated (REFERENCE C.3).

Grammar, as the platform reads it::

    query := term ( "^" term )*
    term  := "ORDERBYDESC" field | "ORDERBY" field | "NQ" term | "OR" condition | "EQ" | condition
    condition := field operator value

``^^`` inside a term is a literal ``^`` (``GlideStringUtil.escapeQueryTermSeparator``); a single
``^`` always separates terms, so an unescaped ``^NQ...`` or ``^ORDERBY...`` inside a value *does*
change the query. Precedence, tightest first: ``^OR`` (joins the neighbouring conditions), ``^``
(AND), ``^NQ`` (OR of whole groups). ``ORDERBY`` terms apply to the whole result wherever they
appear; the first one is the primary key.

Parsing knows nothing about tables. Evaluation goes through a :class:`Schema`, which says what
kind each field is (so integers compare numerically and date-times as instants) and which fields
exist at all: a condition on an unknown field, or a term that is not a condition, is dropped and
the rest of the query kept, as an instance does by default (REFERENCE C.2). Names, operators and
values are case-sensitive.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

INTEGER = "integer"
DATETIME = "datetime"
STRING = "string"

OPERATORS: tuple[str, ...] = (
    # Longest first wherever one operator is a prefix of another.
    "NOT LIKE",
    "NOT IN",
    "ISNOTEMPTY",
    "ISEMPTY",
    "EMPTYSTRING",
    "ANYTHING",
    "STARTSWITH",
    "ENDSWITH",
    "BETWEEN",
    "NSAMEAS",
    "SAMEAS",
    "LIKE",
    "IN",
    "!=",
    ">=",
    "<=",
    "=",
    ">",
    "<",
)

# The field is matched lazily so that the first operator after it ends the name: field names are
# lower case and the word operators upper case, so ``short_descriptionLIKEx`` splits after
# ``short_description``.
_CONDITION = re.compile(
    r"([A-Za-z_][A-Za-z0-9_.]*?)(" + "|".join(re.escape(op) for op in OPERATORS) + r")(.*)\Z",
    re.DOTALL,
)
_VALUELESS = frozenset({"ISEMPTY", "ISNOTEMPTY", "ANYTHING", "EMPTYSTRING"})


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``field operator value`` term. ``operator`` is ``""`` for a term that did not parse."""

    field: str
    operator: str
    value: str = ""

    @property
    def valid(self) -> bool:
        return bool(self.operator)


@dataclass(frozen=True, slots=True)
class OrderKey:
    """One ``ORDERBY``/``ORDERBYDESC`` term."""

    field: str
    descending: bool = False


Clause = tuple[Condition, ...]
"""Conditions joined by ``^OR``."""
Group = tuple[Clause, ...]
"""Clauses joined by ``^`` (AND)."""


@dataclass(frozen=True, slots=True)
class EncodedQuery:
    """A parsed query: ``groups`` are OR-ed (``^NQ``), each an AND of OR-clauses."""

    groups: tuple[Group, ...] = ((),)
    order: tuple[OrderKey, ...] = ()

    def conditions(self) -> list[Condition]:
        """Every condition, in query order."""
        return [cond for group in self.groups for clause in group for cond in clause]


def escape(value: str) -> str:
    """Make ``value`` safe to embed in an encoded query: ``^`` -> ``^^``."""
    return value.replace("^", "^^")


def split_terms(text: str) -> list[str]:
    """Split on single ``^``; ``^^`` becomes a literal ``^`` inside the current term."""
    terms: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "^":
            if text.startswith("^^", i):
                current.append("^")
                i += 2
                continue
            terms.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    terms.append("".join(current))
    return terms


def parse_condition(term: str) -> Condition:
    """``priority<=2`` -> Condition("priority", "<=", "2"); an unparsable term keeps ``operator=""``."""
    m = _CONDITION.match(term)
    if m is None:
        return Condition(term, "")
    name, op, value = m.group(1), m.group(2), m.group(3)
    return Condition(name, op, "" if op in _VALUELESS else value)


def parse(text: str) -> EncodedQuery:
    """Parse an encoded query string (already URL-decoded)."""
    groups: list[list[list[Condition]]] = [[]]
    order: list[OrderKey] = []
    for raw in split_terms(text):
        term = raw
        while term.startswith("NQ"):
            groups.append([])
            term = term[2:]
        if term in ("", "EQ"):
            continue
        if term.startswith("ORDERBYDESC"):
            order.append(OrderKey(term[len("ORDERBYDESC") :], True))
        elif term.startswith("ORDERBY"):
            order.append(OrderKey(term[len("ORDERBY") :], False))
        elif term.startswith("OR") and groups[-1]:
            groups[-1][-1].append(parse_condition(term[2:]))
        elif term.startswith("OR"):
            # Nothing to join with: the first condition of a group stands on its own.
            groups[-1].append([parse_condition(term[2:])])
        else:
            groups[-1].append([parse_condition(term)])
    return EncodedQuery(
        tuple(tuple(tuple(clause) for clause in group) for group in groups),
        tuple(order),
    )


# --- evaluation -----------------------------------------------------------------------------

R = TypeVar("R", bound=Mapping[str, str])


class Schema(Protocol):
    """What evaluation needs to know about a table."""

    def kind(self, field: str) -> str | None:
        """``integer``, ``datetime`` or any other kind (compared as text); ``None`` if unknown."""
        ...

    def value(self, record: Mapping[str, str], field: str) -> str:
        """The raw stored value of ``field`` (``""`` when empty)."""
        ...


@dataclass(frozen=True)
class MappingSchema:
    """A schema from a ``{field: kind}`` mapping; values are read straight from the record."""

    kinds: Mapping[str, str] = field(default_factory=dict)

    def kind(self, field: str) -> str | None:
        return self.kinds.get(field)

    def value(self, record: Mapping[str, str], field: str) -> str:
        return record.get(field, "")


@functools.lru_cache(maxsize=65_536)  # a listing compares every row: parse each text once
def parse_datetime(value: str) -> datetime | None:
    """``YYYY-MM-DD HH:MM:SS`` or ``YYYY-MM-DD`` (UTC, REFERENCE C.3) -> aware datetime."""
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(value.strip(), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def _typed(value: str, kind: str | None) -> int | datetime | str | None:
    """The comparable form of a value, or None when it does not fit the field's kind."""
    if kind == INTEGER:
        try:
            return int(value.strip())
        except ValueError:
            return None
    if kind == DATETIME:
        return parse_datetime(value)
    return value


def _compare(stored: str, literal: str, kind: str | None) -> int | None:
    """-1/0/1 comparing a stored value with a query literal; None if either does not parse."""
    a, b = _typed(stored, kind), _typed(literal, kind)
    if a is None or b is None:
        return None
    return (a > b) - (a < b)  # type: ignore[operator]


def _equal(stored: str, literal: str, kind: str | None) -> bool:
    if stored == literal:
        return True
    if kind not in (INTEGER, DATETIME):
        return False  # text compares as text: only the same string is equal
    return _compare(stored, literal, kind) == 0 if stored and literal else False


def _in(stored: str, literal: str, kind: str | None) -> bool:
    items = literal.split(",")
    if kind not in (INTEGER, DATETIME):
        return stored in items  # one membership test: an IN list can be long (sys_idIN)
    return any(_equal(stored, item, kind) for item in items)


def _between(stored: str, literal: str, kind: str | None) -> bool:
    low, sep, high = literal.partition("@")
    if not sep:
        return False
    lo, hi = _compare(stored, low, kind), _compare(stored, high, kind)
    return lo is not None and hi is not None and lo >= 0 and hi <= 0


def _ordered(test: Callable[[int], bool]) -> Callable[[str, str, str | None], bool]:
    def check(stored: str, literal: str, kind: str | None) -> bool:
        result = _compare(stored, literal, kind) if stored else None
        return result is not None and test(result)

    return check


# Negative operators never match an empty field: the database compares NULL as unknown
# (ServiceNow KB0715430 "How Filters and Report Criteria Handle null Values").
_TESTS: dict[str, Callable[[str, str, str | None], bool]] = {
    "=": _equal,
    "!=": lambda s, v, k: bool(s) and not _equal(s, v, k),
    ">": _ordered(lambda c: c > 0),
    ">=": _ordered(lambda c: c >= 0),
    "<": _ordered(lambda c: c < 0),
    "<=": _ordered(lambda c: c <= 0),
    "LIKE": lambda s, v, k: v in s,
    "NOT LIKE": lambda s, v, k: bool(s) and v not in s,
    "STARTSWITH": lambda s, v, k: s.startswith(v),
    "ENDSWITH": lambda s, v, k: s.endswith(v),
    "IN": _in,
    "NOT IN": lambda s, v, k: bool(s) and not _in(s, v, k),
    "ISEMPTY": lambda s, v, k: s == "",
    "EMPTYSTRING": lambda s, v, k: s == "",
    "ISNOTEMPTY": lambda s, v, k: s != "",
    "ANYTHING": lambda s, v, k: True,
    "BETWEEN": _between,
}


def _usable(cond: Condition, schema: Schema) -> bool:
    if not cond.valid or schema.kind(cond.field) is None:
        return False
    return cond.operator not in ("SAMEAS", "NSAMEAS") or schema.kind(cond.value) is not None


def _holds(cond: Condition, record: Mapping[str, str], schema: Schema) -> bool:
    kind = schema.kind(cond.field)
    stored = schema.value(record, cond.field)
    if cond.operator in ("SAMEAS", "NSAMEAS"):
        other = schema.value(record, cond.value)
        if not stored or not other:
            return False
        return _equal(stored, other, kind) == (cond.operator == "SAMEAS")
    return _TESTS[cond.operator](stored, cond.value, kind)


@dataclass(frozen=True)
class BoundQuery:
    """A query with the conditions on unknown fields dropped, ready to run against one table."""

    groups: tuple[Group, ...]
    order: tuple[OrderKey, ...]
    schema: Schema

    def matches(self, record: Mapping[str, str]) -> bool:
        return any(
            all(any(_holds(c, record, self.schema) for c in clause) for clause in group)
            for group in self.groups
        )

    def sort_key(self, key: OrderKey) -> Callable[[Mapping[str, str]], tuple[int, int | datetime | str]]:
        kind = self.schema.kind(key.field)

        def extract(record: Mapping[str, str]) -> tuple[int, int | datetime | str]:
            raw = self.schema.value(record, key.field)
            typed = _typed(raw, kind) if raw else None
            if typed is None:
                # Empty values sort first (NULLS FIRST), then values that do not fit the kind.
                return (1, raw) if raw else (0, "")
            return (2, typed)

        return extract

    def select(self, records: Iterable[R]) -> list[R]:
        """Matching records in query order; ties keep the input (insertion) order."""
        result = [r for r in records if self.matches(r)]
        # Stable sorts from the last key to the first give a multi-key order.
        for key in reversed(self.order):
            result.sort(key=self.sort_key(key), reverse=key.descending)
        return result


def bind(query: EncodedQuery, schema: Schema, dropped: list[str] | None = None) -> BoundQuery:
    """Drop conditions and orderings the table cannot evaluate (REFERENCE C.2: ignored).

    ``dropped`` (when given) receives each dropped term as written, so a test can see that a
    query silently matched more than it said."""
    groups: list[Group] = []
    for group in query.groups:
        clauses = tuple(kept for clause in group if (kept := tuple(c for c in clause if _usable(c, schema))))
        groups.append(clauses)
        if dropped is not None:
            dropped.extend(
                f"{c.field}{c.operator}{c.value}"
                for clause in group
                for c in clause
                if not _usable(c, schema)
            )
    order = tuple(k for k in query.order if schema.kind(k.field) is not None)
    if dropped is not None:
        dropped.extend(
            f"ORDERBY{'DESC' if k.descending else ''}{k.field}"
            for k in query.order
            if schema.kind(k.field) is None
        )
    return BoundQuery(tuple(groups), order, schema)


def select(text: str, records: Iterable[R], schema: Schema) -> list[R]:
    """Parse ``text``, drop what ``schema`` does not know, filter and order ``records``."""
    return bind(parse(text), schema).select(records)
