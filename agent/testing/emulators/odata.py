"""The OData ``$filter`` / ``$orderby`` subset the Sentinel list operations accept (REFERENCE A.7).

A tokenizer and a recursive-descent parser build a small typed AST; :func:`parse_filter` returns
a :class:`Filter` that is a predicate over one resource's JSON. Precedence follows the OData URL
conventions (5.1.1.15): grouping and ``/`` paths bind tightest, then the unary ``not``, then the
comparisons, then ``and``, then ``or``. So ``not a eq b`` means ``(not a) eq b`` and is rejected
for a non-Boolean ``a``, exactly like an OData service would.

Grammar::

    filter     := or EOF
    or         := and ("or" and)*
    and        := compare ("and" compare)*
    compare    := unary (("eq"|"ne"|"gt"|"ge"|"lt"|"le") unary)?
    unary      := "not" unary | primary
    primary    := "(" or ")" | literal | function "(" [or ("," or)*] ")" | path
    path       := name ("/" name)* ["/" ("any"|"all") "(" [name ":" or] ")"]
    literal    := 'string' (with '' for a quote) | datetime | number | true | false | null

Datetimes are unquoted ISO-8601 with a ``Z`` or ``+hh:mm`` offset and 0-7 fractional digits;
they are compared as instants at 100 ns precision (ARM timestamps carry 7 digits, A.4), never
as strings. When a :class:`Schema` is given, property paths are resolved against it: unknown
properties and mismatched operand types are errors, as in a typed OData service.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cmp_to_key
from typing import Any, TypeAlias

__all__ = [
    "Coll",
    "Filter",
    "Node",
    "ODataError",
    "Obj",
    "OrderKey",
    "Prim",
    "Schema",
    "format_instant",
    "parse_filter",
    "parse_instant",
    "parse_orderby",
    "sort_items",
]


class ODataError(ValueError):
    """The expression is not valid; ``position`` is the 0-based offset of the problem."""

    def __init__(self, message: str, position: int | None = None) -> None:
        self.position = position
        super().__init__(message if position is None else f"{message} at position {position}")


# --- instants ---------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TICKS_PER_SECOND = 10_000_000
_DATETIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})\Z"
)


def parse_instant(text: str) -> int | None:
    """ISO-8601 with an offset and 0-7 fractional digits -> 100 ns ticks since 1970, else None."""
    m = _DATETIME_RE.match(text)
    if m is None:
        return None
    year, month, day, hour, minute = (int(m.group(i)) for i in range(1, 6))
    second = int(m.group(6) or 0)
    fraction = m.group(7) or ""
    if len(fraction) > 7:
        return None
    offset = m.group(8)
    try:
        whole = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
    if offset != "Z":
        sign = 1 if offset[0] == "+" else -1
        oh, om = int(offset[1:3]), int(offset[4:6])
        if oh > 23 or om > 59:
            return None
        whole -= sign * timedelta(hours=oh, minutes=om)
    delta = whole - _EPOCH
    seconds = delta.days * 86_400 + delta.seconds
    return seconds * _TICKS_PER_SECOND + int(fraction.ljust(7, "0"))


def format_instant(ticks: int) -> str:
    """100 ns ticks since 1970 -> ``2024-01-01T10:00:00.1234567Z`` (7 fractional digits)."""
    seconds, fraction = divmod(ticks, _TICKS_PER_SECOND)
    whole = _EPOCH + timedelta(seconds=seconds)
    return whole.strftime("%Y-%m-%dT%H:%M:%S.") + f"{fraction:07d}Z"


# --- schema -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prim:
    """A primitive property: ``string``, ``datetime``, ``int``, ``number`` or ``bool``."""

    kind: str


@dataclass(frozen=True, slots=True)
class Coll:
    """A collection property (usable only through ``any``/``all``)."""

    item: Schema


@dataclass(frozen=True, slots=True)
class Obj:
    """A complex property with named members."""

    fields: Mapping[str, Schema]
    name: str = "object"


Schema: TypeAlias = Prim | Coll | Obj

# --- tokens -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # name | string | datetime | number | punct | eof
    text: str
    value: Any
    pos: int


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DATETIME_TOKEN_RE = re.compile(r"\d{4}-\d{2}-\d{2}(?:T[0-9:.]*)?(?:[Zz]|[+-]\d{2}:?\d{2})?")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_PUNCT = "(),:/"


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in _PUNCT:
            tokens.append(_Token("punct", c, c, i))
            i += 1
        elif c == "'":
            tokens.append(_string_token(text, i))
            i += len(tokens[-1].text)
        elif c.isdigit() or (c == "-" and i + 1 < n and text[i + 1].isdigit()):
            tokens.append(_number_or_datetime(text, i))
            i += len(tokens[-1].text)
        elif m := _NAME_RE.match(text, i):
            tokens.append(_Token("name", m.group(), m.group(), i))
            i = m.end()
        else:
            raise ODataError(f"syntax error: unexpected character {c!r}", i)
    tokens.append(_Token("eof", "", None, n))
    return tokens


def _string_token(text: str, start: int) -> _Token:
    i, chars = start + 1, []
    while i < len(text):
        if text[i] == "'":
            if text.startswith("''", i):
                chars.append("'")
                i += 2
                continue
            return _Token("string", text[start : i + 1], "".join(chars), start)
        chars.append(text[i])
        i += 1
    raise ODataError("syntax error: unterminated string literal", start)


def _number_or_datetime(text: str, start: int) -> _Token:
    m = _DATETIME_TOKEN_RE.match(text, start)
    if m and len(m.group()) > 4 and text[start + 4 : start + 5] == "-":
        literal = m.group()
        ticks = parse_instant(literal)
        if ticks is None:
            raise ODataError(
                f"invalid datetime literal {literal!r} (expected e.g. 2024-01-01T00:00:00Z, "
                "with an offset and at most 7 fractional digits)",
                start,
            )
        return _Token("datetime", literal, ticks, start)
    n = _NUMBER_RE.match(text, start)
    assert n is not None  # the caller saw a digit
    literal = n.group()
    value: int | float = float(literal) if any(ch in literal for ch in ".eE") else int(literal)
    return _Token("number", literal, value, start)


# --- AST --------------------------------------------------------------------------------------

_ANY = "any"  # static type of an untyped path
_BOOL = "bool"
_NULL = "null"


@dataclass(frozen=True, slots=True)
class Node:
    """One AST node. ``op`` names it; ``typ`` is its static type; ``args`` its children."""

    op: str  # literal | path | not | and | or | eq..le | call | any | all
    typ: str
    args: tuple[Node, ...] = ()
    value: Any = None  # literal value, function name, or (variable, segments) for a path
    pos: int = 0

    def __str__(self) -> str:
        if self.op == "literal":
            return format_instant(self.value) if self.typ == "datetime" else repr(self.value)
        if self.op == "path":
            var, segs = self.value
            return "/".join(([var] if var else []) + list(segs))
        if self.op in ("any", "all"):
            coll, *body = self.args
            var = self.value
            return f"{coll}/{self.op}({var}: {body[0]})" if body else f"{coll}/{self.op}()"
        if self.op == "call":
            return f"{self.value}({', '.join(str(a) for a in self.args)})"
        if self.op == "not":
            return f"(not {self.args[0]})"
        return f"({self.args[0]} {self.op} {self.args[1]})"


_COMPARISONS = ("eq", "ne", "gt", "ge", "lt", "le")
# name -> (argument types, result type); names are matched case-insensitively so both
# toLower and tolower work, as clients use both (REFERENCE A.7).
_FUNCTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "contains": (("string", "string"), _BOOL),
    "startswith": (("string", "string"), _BOOL),
    "endswith": (("string", "string"), _BOOL),
    "tolower": (("string",), "string"),
    "toupper": (("string",), "string"),
    "trim": (("string",), "string"),
    "length": (("string",), "int"),
}


def _comparable(left: str, right: str) -> bool:
    if _ANY in (left, right) or _NULL in (left, right):
        return True
    numeric = {"int", "number"}
    if left in numeric and right in numeric:
        return True
    return left == right and left in ("string", "datetime", _BOOL)


class _Parser:
    def __init__(self, text: str, schema: Schema | None) -> None:
        self.tokens = _tokenize(text)
        self.i = 0
        self.schema = schema
        self.scopes: list[tuple[str, Schema | None]] = []
        self.root_paths: set[tuple[str, ...]] = set()

    # -- token helpers
    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def next(self) -> _Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def is_name(self, *words: str) -> bool:
        return self.tok.kind == "name" and self.tok.text in words

    def expect_punct(self, ch: str) -> _Token:
        if self.tok.kind != "punct" or self.tok.text != ch:
            found = self.tok.text or "end of input"
            raise ODataError(f"syntax error: expected {ch!r}, found {found!r}", self.tok.pos)
        return self.next()

    # -- grammar
    def parse_filter(self) -> Node:
        node = self.parse_or()
        if self.tok.kind != "eof":
            raise ODataError(f"syntax error: unexpected {self.tok.text!r}", self.tok.pos)
        self.require_bool(node, "the filter")
        return node

    def parse_or(self) -> Node:
        node = self.parse_and()
        while self.is_name("or"):
            pos = self.next().pos
            right = self.parse_and()
            node = self.logical("or", node, right, pos)
        return node

    def parse_and(self) -> Node:
        node = self.parse_compare()
        while self.is_name("and"):
            pos = self.next().pos
            right = self.parse_compare()
            node = self.logical("and", node, right, pos)
        return node

    def logical(self, op: str, left: Node, right: Node, pos: int) -> Node:
        self.require_bool(left, f"the left operand of '{op}'")
        self.require_bool(right, f"the right operand of '{op}'")
        return Node(op, _BOOL, (left, right), pos=pos)

    def parse_compare(self) -> Node:
        left = self.parse_unary()
        if not self.is_name(*_COMPARISONS):
            return left
        op_tok = self.next()
        right = self.parse_unary()
        for side in (left, right):
            if side.typ in ("collection", "object"):
                raise ODataError(f"'{op_tok.text}' cannot compare the {side.typ} '{side}'", side.pos)
        if not _comparable(left.typ, right.typ):
            raise ODataError(
                f"incompatible operand types {left.typ} and {right.typ} for '{op_tok.text}'", op_tok.pos
            )
        return Node(op_tok.text, _BOOL, (left, right), pos=op_tok.pos)

    def parse_unary(self) -> Node:
        if self.is_name("not"):
            pos = self.next().pos
            operand = self.parse_unary()
            self.require_bool(operand, "the operand of 'not'")
            return Node("not", _BOOL, (operand,), pos=pos)
        return self.parse_primary()

    def next_is_punct(self, ch: str) -> bool:
        t = self.tokens[self.i + 1]
        return t.kind == "punct" and t.text == ch

    def parse_primary(self) -> Node:
        t = self.tok
        if t.kind == "punct" and t.text == "(":
            self.next()
            node = self.parse_or()
            self.expect_punct(")")
            return node
        if t.kind == "string":
            self.next()
            return Node("literal", "string", value=t.value, pos=t.pos)
        if t.kind == "datetime":
            self.next()
            return Node("literal", "datetime", value=t.value, pos=t.pos)
        if t.kind == "number":
            self.next()
            return Node("literal", "int" if isinstance(t.value, int) else "number", value=t.value, pos=t.pos)
        if t.kind == "name":
            if t.text in ("true", "false"):
                self.next()
                return Node("literal", _BOOL, value=t.text == "true", pos=t.pos)
            if t.text == "null":
                self.next()
                return Node("literal", _NULL, value=None, pos=t.pos)
            if self.next_is_punct("("):
                return self.parse_call()
            return self.parse_path()
        raise ODataError(f"syntax error: unexpected {t.text or 'end of input'!r}", t.pos)

    def parse_call(self) -> Node:
        name_tok = self.next()
        name = name_tok.text.lower()
        if name not in _FUNCTIONS:
            raise ODataError(f"unknown function '{name_tok.text}'", name_tok.pos)
        self.expect_punct("(")
        args: list[Node] = []
        if not (self.tok.kind == "punct" and self.tok.text == ")"):
            args.append(self.parse_or())
            while self.tok.kind == "punct" and self.tok.text == ",":
                self.next()
                args.append(self.parse_or())
        self.expect_punct(")")
        wanted, result = _FUNCTIONS[name]
        if len(args) != len(wanted):
            raise ODataError(
                f"function '{name_tok.text}' takes {len(wanted)} argument(s), got {len(args)}", name_tok.pos
            )
        for arg, typ in zip(args, wanted, strict=True):
            if arg.typ not in (typ, _ANY, _NULL):
                raise ODataError(
                    f"function '{name_tok.text}' expects a {typ} argument, got {arg.typ}", arg.pos
                )
        return Node("call", result, tuple(args), value=name, pos=name_tok.pos)

    def parse_path(self) -> Node:
        first = self.next()
        segments = [first.text]
        var: str | None = None
        current: Schema | None = self.schema
        untyped = self.schema is None
        scope = next((s for s in reversed(self.scopes) if s[0] == first.text), None)
        if scope is not None:
            var, current, segments = first.text, scope[1], []
            untyped = scope[1] is None
        while self.tok.kind == "punct" and self.tok.text == "/":
            self.next()
            seg = self.tok
            if seg.kind != "name":
                raise ODataError("syntax error: expected a property name after '/'", seg.pos)
            self.next()
            if seg.text in ("any", "all") and self.tok.kind == "punct" and self.tok.text == "(":
                coll = self.path_node(var, segments, current, untyped, first.pos)
                return self.parse_lambda(seg, coll, untyped)
            segments.append(seg.text)
        return self.path_node(var, segments, current, untyped, first.pos)

    def path_node(
        self, var: str | None, segments: list[str], start: Schema | None, untyped: bool, pos: int
    ) -> Node:
        if var is None:
            self.root_paths.add(tuple(segments))
        if untyped:
            return Node("path", _ANY, value=(var, tuple(segments)), pos=pos)
        node_schema = start if var is not None else self.schema
        walked: list[str] = [var] if var else []
        for seg in segments:
            if isinstance(node_schema, Obj) and seg in node_schema.fields:
                node_schema = node_schema.fields[seg]
                walked.append(seg)
                continue
            where = "/".join(walked) or "the resource"
            if isinstance(node_schema, Coll):
                raise ODataError(f"'{where}' is a collection: use any() or all() to reach '{seg}'", pos)
            raise ODataError(f"could not find a property named '{seg}' on '{where}'", pos)
        return Node("path", _type_name(node_schema), value=(var, tuple(segments)), pos=pos)

    def parse_lambda(self, op_tok: _Token, coll: Node, untyped: bool) -> Node:
        if coll.typ not in ("collection", _ANY):
            raise ODataError(f"'{op_tok.text}' needs a collection, '{coll}' is {coll.typ}", op_tok.pos)
        self.expect_punct("(")
        if self.tok.kind == "punct" and self.tok.text == ")":
            self.next()
            if op_tok.text == "all":
                raise ODataError("'all' needs a lambda expression", op_tok.pos)
            return Node("any", _BOOL, (coll,), value=None, pos=op_tok.pos)
        var_tok = self.next()
        if var_tok.kind != "name" or var_tok.text in ("not", "and", "or", "true", "false", "null"):
            raise ODataError("syntax error: expected a lambda variable name", var_tok.pos)
        self.expect_punct(":")
        item_schema = self.collection_item(coll, untyped)
        self.scopes.append((var_tok.text, item_schema))
        try:
            body = self.parse_or()
        finally:
            self.scopes.pop()
        self.expect_punct(")")
        self.require_bool(body, f"the body of '{op_tok.text}'")
        return Node(op_tok.text, _BOOL, (coll, body), value=var_tok.text, pos=op_tok.pos)

    def collection_item(self, coll: Node, untyped: bool) -> Schema | None:
        if untyped or coll.typ == _ANY:
            return None
        var, segments = coll.value
        node_schema: Schema | None = self.schema
        if var is not None:
            node_schema = next(s for v, s in reversed(self.scopes) if v == var)
        for seg in segments:
            assert isinstance(node_schema, Obj)
            node_schema = node_schema.fields[seg]
        assert isinstance(node_schema, Coll)
        return node_schema.item

    def require_bool(self, node: Node, what: str) -> None:
        if node.typ not in (_BOOL, _ANY):
            raise ODataError(f"{what} must be a Boolean expression, got {node.typ} '{node}'", node.pos)


def _type_name(schema: Schema | None) -> str:
    if schema is None:
        return _ANY
    if isinstance(schema, Prim):
        return schema.kind
    return "collection" if isinstance(schema, Coll) else "object"


# --- evaluation -------------------------------------------------------------------------------

Env: TypeAlias = Mapping[str, Any]


def _resolve(base: Any, segments: Sequence[str]) -> Any:
    for seg in segments:
        if not isinstance(base, Mapping):
            return None
        base = base.get(seg)
    return base


def _as_instant(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return parse_instant(value) if isinstance(value, str) else None


def _evaluate(node: Node, env: Env) -> Any:
    op = node.op
    if op == "literal":
        return node.value
    if op == "path":
        var, segments = node.value
        return _resolve(env[var] if var else env["$it"], segments)
    if op == "and":
        return _truthy(_evaluate(node.args[0], env)) and _truthy(_evaluate(node.args[1], env))
    if op == "or":
        return _truthy(_evaluate(node.args[0], env)) or _truthy(_evaluate(node.args[1], env))
    if op == "not":
        inner = _evaluate(node.args[0], env)
        return None if inner is None else not _truthy(inner)
    if op in _COMPARISONS:
        return _compare(node, env)
    if op == "call":
        return _call(node.value, [_evaluate(a, env) for a in node.args])
    return _lambda(node, env)


def _truthy(value: Any) -> bool:
    return value is True


def _compare(node: Node, env: Env) -> bool:
    left_node, right_node = node.args
    left, right = _evaluate(left_node, env), _evaluate(right_node, env)
    if "datetime" in (left_node.typ, right_node.typ):
        converted = [None if v is None else _as_instant(v) for v in (left, right)]
        if any(c is None and v is not None for c, v in zip(converted, (left, right), strict=True)):
            return False  # a stored value that is not a timestamp compares with nothing
        left, right = converted
    op = node.op
    if left is None or right is None:
        if op == "eq":
            return left is None and right is None
        if op == "ne":
            return not (left is None and right is None)
        return False
    try:
        if op == "eq":
            return bool(left == right)
        if op == "ne":
            return bool(left != right)
        if op == "gt":
            return bool(left > right)
        if op == "ge":
            return bool(left >= right)
        if op == "lt":
            return bool(left < right)
        return bool(left <= right)
    except TypeError:
        return False


def _call(name: str, args: list[Any]) -> Any:
    if any(a is None for a in args):
        return None
    if not all(isinstance(a, str) for a in args):
        return None
    if name == "contains":
        return args[1] in args[0]
    if name == "startswith":
        return args[0].startswith(args[1])
    if name == "endswith":
        return args[0].endswith(args[1])
    if name == "tolower":
        return args[0].lower()
    if name == "toupper":
        return args[0].upper()
    if name == "trim":
        return args[0].strip()
    return len(args[0].encode("utf-16-le")) // 2


def _lambda(node: Node, env: Env) -> bool:
    items = _evaluate(node.args[0], env)
    if not isinstance(items, list):
        return False
    if len(node.args) == 1:
        return bool(items)
    var = node.value
    body = node.args[1]
    results = (_truthy(_evaluate(body, {**env, var: item})) for item in items)
    return any(results) if node.op == "any" else all(results)


class Filter:
    """A parsed ``$filter``: call it with a resource's JSON to test it."""

    def __init__(self, text: str, expr: Node, root_paths: Iterable[tuple[str, ...]]) -> None:
        self.text = text
        self.expr = expr
        self.paths: frozenset[tuple[str, ...]] = frozenset(root_paths)

    def __call__(self, item: Mapping[str, Any]) -> bool:
        return _truthy(_evaluate(self.expr, {"$it": item}))

    def references(self, *path: str) -> bool:
        """Whether the filter reads the property at ``path`` of the resource (not of a lambda item)."""
        return tuple(path) in self.paths

    def __repr__(self) -> str:
        return f"Filter({self.expr})"


def parse_filter(text: str, schema: Schema | None = None) -> Filter:
    """Parse a ``$filter`` value; raise :class:`ODataError` with a message when it is invalid."""
    if not text.strip():
        raise ODataError("the filter expression is empty", 0)
    parser = _Parser(text, schema)
    expr = parser.parse_filter()
    return Filter(text, expr, parser.root_paths)


# --- ordering ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderKey:
    """One ``$orderby`` item: a property path and its direction."""

    path: tuple[str, ...]
    descending: bool
    typ: str = _ANY


def parse_orderby(text: str, schema: Schema | None = None) -> list[OrderKey]:
    """Parse ``path [asc|desc] (, path [asc|desc])*``; raise :class:`ODataError` when invalid."""
    if not text.strip():
        raise ODataError("the orderby expression is empty", 0)
    parser = _Parser(text, schema)
    keys: list[OrderKey] = []
    while True:
        if parser.tok.kind != "name":
            raise ODataError("syntax error: expected a property path", parser.tok.pos)
        node = parser.parse_path()
        if node.op != "path" or node.typ in ("collection", "object"):
            raise ODataError(f"cannot order by '{node}'", node.pos)
        descending = False
        if parser.is_name("asc", "desc"):
            descending = parser.next().text == "desc"
        keys.append(OrderKey(node.value[1], descending, node.typ))
        if parser.tok.kind == "eof":
            return keys
        parser.expect_punct(",")


def _order_value(item: Mapping[str, Any], key: OrderKey) -> Any:
    value = _resolve(item, key.path)
    if key.typ == "datetime" and value is not None:
        return _as_instant(value)
    return value


def _cmp(a: Any, b: Any) -> int:
    # OData orders null before every value.
    if a is None or b is None:
        return (a is not None) - (b is not None)
    try:
        return int((a > b) - (a < b))
    except TypeError:
        return (str(type(a)) > str(type(b))) - (str(type(a)) < str(type(b)))


def sort_items(
    items: Iterable[Mapping[str, Any]],
    keys: Sequence[OrderKey],
    tiebreak: Callable[[Mapping[str, Any]], Any] | None = None,
) -> list[Any]:
    """Sort resources by ``keys`` (stable), then by ``tiebreak`` so paging is deterministic."""

    def compare(x: Mapping[str, Any], y: Mapping[str, Any]) -> int:
        for key in keys:
            c = _cmp(_order_value(x, key), _order_value(y, key))
            if c:
                return -c if key.descending else c
        return _cmp(tiebreak(x), tiebreak(y)) if tiebreak else 0

    return sorted(items, key=cmp_to_key(compare))
