"""ServiceNow encoded queries (``sysparm_query``), built safely.

This module is the only way a value enters a ServiceNow query. An encoded query is a string in
which ``^`` separates conditions, ``^OR`` / ``^NQ`` start alternatives and ``ORDERBY`` sorts
(REFERENCE C.3), so a value such as the title ``x^ORDERBYsys_id^NQactive=true`` pasted into
the string would rewrite the query's meaning. :class:`Q` escapes and checks every value:

* ``^`` in a value is written ``^^``, the platform's own escape (REFERENCE C.3);
* newlines and carriage returns are rejected (they end a query term on some releases);
* a value starting with ``javascript:`` is rejected: the instance would run it as a script;
* ``IN`` values must not contain ``,`` (the list separator has no escape);
* an empty value is rejected for comparisons: some releases ignore such a term, which widens
  the query to every record. Use :meth:`Q.is_empty` for that;
* field names must match ``^[a-z0-9_.]+$`` (dot-walking allowed);
* datetimes are written ``YYYY-MM-DD HH:MM:SS`` in UTC, which the Table API compares in UTC.

A rejected value raises :class:`~agent.errors.DataError`: values come from records, so that
fails one incident; a bad field name or a naive datetime is a bug and raises ``ValueError``.

Example::

    q = (Q.eq("correlation_id", guid) & Q.eq("active", True)).order_by("sys_updated_on", desc=True)
    str(q)  # 'correlation_id=73e0...^active=true^ORDERBYDESCsys_updated_on'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from agent.connectors.servicenow.models import format_snow_time
from agent.errors import DataError

Value = str | int | bool | datetime

_FIELD = re.compile(r"^[a-z0-9_.]+$")
_SCRIPT = re.compile(r"^\s*javascript\s*:", re.I)


def field_name(name: str) -> str:
    """Validate a field (column) name; returns it unchanged."""
    if not isinstance(name, str) or not _FIELD.match(name):
        raise ValueError(f"invalid ServiceNow field name: {name!r}")
    return name


def encode_value(value: Value) -> str:
    """One escaped query value (see the module docstring for the rules)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime in a ServiceNow query: give it a time zone (UTC)")
        return format_snow_time(value)
    if not isinstance(value, str):
        raise TypeError(f"unsupported ServiceNow query value type: {type(value).__name__}")
    if "\n" in value or "\r" in value:
        raise DataError("a ServiceNow query value must not contain a line break")
    if value == "":
        raise DataError("empty value in a ServiceNow query comparison (use Q.is_empty / Q.is_not_empty)")
    if _SCRIPT.match(value):
        raise DataError("a ServiceNow query value must not start with 'javascript:'")
    return value.replace("^", "^^")


@dataclass(frozen=True, slots=True)
class Q:
    """An immutable encoded query: AND-ed terms (each a condition or an OR chain) plus ordering.

    Combine with ``&`` (AND) and ``|`` (OR, only between single conditions or OR chains, since
    ``^OR`` binds to its neighbours only); :meth:`either` ORs whole queries (``^NQ``).
    ``Q()`` is the empty query (all records).
    """

    terms: tuple[str, ...] = ()
    orders: tuple[str, ...] = ()
    _or_chain: bool = False
    _groups: bool = False

    # -- conditions --

    @classmethod
    def _cond(cls, field: str, op: str, value: Value) -> Q:
        return cls((f"{field_name(field)}{op}{encode_value(value)}",), (), True)

    @classmethod
    def eq(cls, field: str, value: Value) -> Q:
        """``field=value``."""
        return cls._cond(field, "=", value)

    @classmethod
    def ne(cls, field: str, value: Value) -> Q:
        """``field!=value``."""
        return cls._cond(field, "!=", value)

    @classmethod
    def gt(cls, field: str, value: Value) -> Q:
        """``field>value``."""
        return cls._cond(field, ">", value)

    @classmethod
    def ge(cls, field: str, value: Value) -> Q:
        """``field>=value``."""
        return cls._cond(field, ">=", value)

    @classmethod
    def lt(cls, field: str, value: Value) -> Q:
        """``field<value``."""
        return cls._cond(field, "<", value)

    @classmethod
    def le(cls, field: str, value: Value) -> Q:
        """``field<=value``."""
        return cls._cond(field, "<=", value)

    @classmethod
    def like(cls, field: str, value: Value) -> Q:
        """``fieldLIKEvalue`` (contains)."""
        return cls._cond(field, "LIKE", value)

    @classmethod
    def startswith(cls, field: str, value: Value) -> Q:
        """``fieldSTARTSWITHvalue``."""
        return cls._cond(field, "STARTSWITH", value)

    @classmethod
    def in_(cls, field: str, values: Iterable[Value]) -> Q:
        """``fieldINa,b,c``. At least one value; no value may contain ``,``."""
        encoded = []
        for value in values:
            text = encode_value(value)
            if "," in text:
                raise DataError(f"a value in a ServiceNow IN list must not contain ',': {value!r}")
            encoded.append(text)
        if not encoded:
            raise ValueError("empty IN list in a ServiceNow query")
        return cls((f"{field_name(field)}IN{','.join(encoded)}",), (), True)

    @classmethod
    def is_empty(cls, field: str) -> Q:
        """``fieldISEMPTY``."""
        return cls((f"{field_name(field)}ISEMPTY",), (), True)

    @classmethod
    def is_not_empty(cls, field: str) -> Q:
        """``fieldISNOTEMPTY``."""
        return cls((f"{field_name(field)}ISNOTEMPTY",), (), True)

    # -- combination --

    @classmethod
    def either(cls, *queries: Q) -> Q:
        """``a^NQb``: records matching any of the queries (each a full AND of conditions).

        The result can only be ordered, not combined further: ``^NQ`` binds loosest, so an
        ``&`` appended afterwards would apply to the last group only.
        """
        groups: list[str] = []
        for q in queries:
            if not q.terms or q.orders:
                raise ValueError("Q.either needs non-empty queries without ordering")
            groups.append("^".join(q.terms) if not q._groups else q.terms[0])
        if not groups:
            raise ValueError("Q.either needs at least one query")
        if len(groups) == 1:
            return queries[0]
        return cls(("^NQ".join(groups),), (), False, True)

    def __and__(self, other: Q) -> Q:
        if not isinstance(other, Q):
            return NotImplemented
        if (self._groups and other.terms) or (other._groups and self.terms):
            raise ValueError("a Q.either query cannot be AND-ed further (^NQ binds loosest)")
        terms = self.terms + other.terms
        single = len(terms) == 1 and (self._or_chain or other._or_chain)
        return Q(terms, self.orders + other.orders, single, self._groups or other._groups)

    def __or__(self, other: Q) -> Q:
        if not isinstance(other, Q):
            return NotImplemented
        for side in (self, other):
            if not side._or_chain or side.orders:
                raise ValueError("'|' joins single conditions only (ServiceNow ^OR binds to its neighbours)")
        return Q((f"{self.terms[0]}^OR{other.terms[0]}",), (), True)

    def order_by(self, field: str, desc: bool = False) -> Q:
        """A copy that also sorts by ``field`` (after any earlier ordering)."""
        order = f"ORDERBY{'DESC' if desc else ''}{field_name(field)}"
        return Q(self.terms, (*self.orders, order), self._or_chain, self._groups)

    @property
    def encoded(self) -> str:
        """The ``sysparm_query`` string."""
        return "^".join(self.terms + self.orders)

    def __str__(self) -> str:
        return self.encoded

    def __bool__(self) -> bool:
        return bool(self.terms or self.orders)
