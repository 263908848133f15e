"""Sizes of the agent's modules, classes and functions, read with :mod:`ast`.

    python -m agent.testing.sizes [ROOT] [--top N] [--exclude PREFIX ...]

prints the largest modules (lines), classes (lines, methods) and functions (lines), and how many
functions are longer than 40 lines. A function's lines run from its ``def`` (decorators included)
to its last statement; a class's likewise. ``--exclude agent/testing`` leaves out the test-side
code the issue's size targets do not cover.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sized:
    path: str
    name: str
    lines: int
    methods: int = 0


def _span(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> int:
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return (node.end_lineno or node.lineno) - first + 1


def _defs(tree: ast.AST, path: str, prefix: str = "") -> Iterator[Sized]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield Sized(path, prefix + node.name, _span(node))
            yield from _defs(node, path, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _defs(node, path, f"{prefix}{node.name}.")


def _classes(tree: ast.AST, path: str) -> Iterator[Sized]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            methods = sum(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in node.body)
            yield Sized(path, node.name, _span(node), methods)


def measure(root: Path, exclude: Sequence[str]) -> tuple[list[Sized], list[Sized], list[Sized]]:
    """(modules, classes, functions) under ``root``, each largest first."""
    modules: list[Sized] = []
    classes: list[Sized] = []
    functions: list[Sized] = []
    for file in sorted(root.rglob("*.py")):
        rel = file.as_posix()
        if any(rel.startswith(prefix.rstrip("/") + "/") or rel == prefix for prefix in exclude):
            continue
        text = file.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=rel)
        modules.append(Sized(rel, rel, len(text.splitlines())))
        classes.extend(_classes(tree, rel))
        functions.extend(_defs(tree, rel))
    return tuple(sorted(items, key=lambda s: -s.lines) for items in (modules, classes, functions))  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.testing.sizes", description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", default="agent")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--exclude", nargs="*", default=[], metavar="PREFIX")
    args = parser.parse_args(argv)
    modules, classes, functions = measure(Path(args.root), args.exclude)
    out = sys.stdout
    out.write(f"{len(modules)} modules, {sum(m.lines for m in modules)} lines\n\nlargest modules (lines):\n")
    for m in modules[: args.top]:
        out.write(f"  {m.lines:6}  {m.path}\n")
    out.write("\nlargest classes (lines, methods):\n")
    for c in classes[: args.top]:
        out.write(f"  {c.lines:6} {c.methods:4}  {c.path}:{c.name}\n")
    out.write("\nlargest functions (lines):\n")
    for f in functions[: args.top]:
        out.write(f"  {f.lines:6}  {f.path}:{f.name}\n")
    over = [f for f in functions if f.lines > 40]
    out.write(f"\nfunctions: {len(functions)}, over 40 lines: {len(over)}, over 80 lines: ")
    out.write(f"{sum(f.lines > 80 for f in functions)}\n")
    out.write(f"modules over 400 lines: {sum(m.lines > 400 for m in modules)}, over 500: ")
    out.write(f"{sum(m.lines > 500 for m in modules)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
