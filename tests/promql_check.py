"""Check a PromQL expression against what the agent really exports.

A dashboard panel or an alert rule that names a metric or a label the agent does not export
shows "No data" or never fires, silently. :func:`problems` parses an expression with a real
PromQL parser and compares every metric name and label name it reads with a scrape of a
running agent (:class:`Exported`): a vector selector's name and matchers, and the labels of
``by``/``without``, ``on``/``ignoring`` and ``group_left``/``group_right``. ``job`` and
``instance`` are the target labels Prometheus adds when it scrapes. ``rate``, ``irate`` and
``increase`` of a gauge are reported too (they read a counter's resets into a gauge's dips).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import promql_parser as pq
from prometheus_client.parser import text_string_to_metric_families

TARGET_LABELS = frozenset({"job", "instance"})
"""Labels Prometheus attaches to every scraped series (its target labels)."""

COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase"})
COUNTING = frozenset({"counter", "histogram", "summary"})  # their _bucket/_count/_sum only grow
GRAFANA_INTERVALS = re.compile(
    r"\$(?:__rate_interval|__interval|__range)\b|\$\{(?:__rate_interval|__interval|__range)\}"
)


@dataclass
class Exported:
    """Sample names (``_total``, ``_bucket``, ... included) with their label names and the type
    of their family; ``families`` are the names of the families that have samples."""

    labels: dict[str, set[str]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    families: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, text: str) -> Exported:
        out = cls()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.labels.setdefault(sample.name, set()).update(sample.labels)
                out.types[sample.name] = family.type
                out.families.add(family.name)
        return out


@dataclass
class _Reads:
    selectors: list[pq.VectorSelector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    rated: list[str] = field(default_factory=list)


def problems(expr: str, exported: Exported) -> list[str]:
    """Every way ``expr`` (Grafana's ``$__rate_interval`` and friends allowed) reads something
    the agent does not export; empty when it reads only what exists."""
    try:
        tree = pq.parse(GRAFANA_INTERVALS.sub("5m", expr))
    except ValueError as exc:
        return [f"does not parse: {exc}"]
    reads = _Reads()
    _walk(tree, reads)
    found: list[str] = []
    known: set[str] = set(TARGET_LABELS)
    for sel in reads.selectors:
        name = sel.name
        if name is None or name not in exported.labels:
            found.append(f"metric {name!r} is not exported")
            continue
        known |= exported.labels[name]
        allowed = exported.labels[name] | TARGET_LABELS
        found += [f"{name} has no label {m.name!r}" for m in sel.matchers.matchers if m.name not in allowed]
    if not found:  # an unknown metric's labels are unknown too
        found += [
            f"label {label!r} is on none of the metrics it reads" for label in sorted(reads.grouping - known)
        ]
    found += [
        f"{name} is a {exported.types[name]}, not a counter (rate/increase)"
        for name in reads.rated
        if exported.types.get(name, "counter") not in COUNTING
    ]
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects."""
    reads = _Reads()
    _walk(pq.parse(GRAFANA_INTERVALS.sub("5m", expr)), reads)
    return {sel.name for sel in reads.selectors if sel.name is not None}


def _walk(node: pq.Expr, reads: _Reads) -> None:
    if isinstance(node, pq.VectorSelector):
        reads.selectors.append(node)
    elif isinstance(node, pq.MatrixSelector):
        _walk(node.vector_selector, reads)
    elif isinstance(node, (pq.ParenExpr, pq.UnaryExpr, pq.SubqueryExpr)):
        _walk(node.expr, reads)
    elif isinstance(node, pq.AggregateExpr):
        if node.modifier is not None:
            reads.grouping.update(node.modifier.labels)
        for child in (node.expr, node.param):
            if child is not None:
                _walk(child, reads)
    elif isinstance(node, pq.BinaryExpr):
        modifier = node.modifier
        if modifier is not None:
            if modifier.matching is not None:
                reads.grouping.update(modifier.matching.labels)
            reads.grouping.update(_group_labels(modifier))
        _walk(node.lhs, reads)
        _walk(node.rhs, reads)
    elif isinstance(node, pq.Call):
        if node.func.name in ("label_replace", "label_join"):
            raise NotImplementedError(f"{node.func.name} names labels in strings: teach this checker first")
        if node.func.name in COUNTER_FUNCTIONS:
            reads.rated += [s.name for s in _selectors(node.args) if s.name is not None]
        for arg in node.args:
            _walk(arg, reads)
    elif not isinstance(node, (pq.NumberLiteral, pq.StringLiteral)):
        raise NotImplementedError(f"unexpected PromQL node {type(node).__name__}")


def _group_labels(modifier: pq.BinModifier) -> Iterable[str]:
    """The labels ``group_left(...)``/``group_right(...)`` copy from the "one" side."""
    return list(modifier.group_labels or ())


def _selectors(args: Iterable[pq.Expr]) -> Iterator[pq.VectorSelector]:
    for arg in args:
        if isinstance(arg, pq.MatrixSelector):
            yield arg.vector_selector
        elif isinstance(arg, pq.SubqueryExpr) and isinstance(arg.expr, pq.VectorSelector):
            yield arg.expr
