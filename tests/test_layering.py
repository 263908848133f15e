"""What may import and print what, read from the source (every import counts, also one inside a
function): no import cycles in ``agent/``; only the command line writes to stdout or stderr; the
agent never imports its test-side code (emulators, bench, crash points), which the wheel leaves
out."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "agent"
TEST_SIDE = ("agent.testing",)  # the emulators, the bench, the crash points
# The logger writes its JSON lines to stdout and the live progress line to stderr: that is their job.
OUTPUT = {"agent.log", "agent.progress"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(AGENT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def imports(name: str) -> set[str]:
    """The agent modules ``name`` imports, at the top or inside a function."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            for alias in node.names:
                qualified = f"{base}.{alias.name}"
                found.add(qualified if qualified in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports(name) for name in MODULES}


def cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for name in GRAPH:
        if name not in index:
            visit(name)
    return groups


def test_the_agent_has_no_import_cycle() -> None:
    assert cycles() == []


def test_the_cycle_finder_sees_one() -> None:
    GRAPH["agent.app.status"].add("agent.cli.commands")  # what print_json in the CLI used to cause
    try:
        assert cycles() == [["agent.app.status", "agent.cli.commands"]]
    finally:
        GRAPH["agent.app.status"].discard("agent.cli.commands")


def core() -> Iterator[str]:
    yield from (name for name in MODULES if not name.startswith(TEST_SIDE))


def in_cli(name: str) -> bool:
    return name == "agent.__main__" or name == "agent.cli" or name.startswith("agent.cli.")


def writes_output(name: str) -> list[str]:
    """``print(...)``, ``sys.stdout``, ``sys.stderr`` in a module, as ``line: code``."""
    found = []
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        printing = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
        stream = (
            isinstance(node, ast.Attribute)
            and node.attr in ("stdout", "stderr")
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
        )
        if printing or stream:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_only_the_command_line_writes_to_stdout() -> None:
    printing = {name: writes_output(name) for name in core() if not in_cli(name) and name not in OUTPUT}
    assert {name: lines for name, lines in printing.items() if lines} == {}
    assert writes_output("agent.cli.commands") and writes_output("agent.cli.main")  # the finder finds them


def test_the_agent_never_imports_its_test_side() -> None:
    # agent.cli.demo is the one bridge: only the `demo` command imports it, and only when it runs.
    reached = {name: sorted(m for m in GRAPH[name] if m.startswith(TEST_SIDE)) for name in core()}
    assert {name: found for name, found in reached.items() if found} == {
        "agent.cli.demo": ["agent.testing.emulators.simulator", "agent.testing.emulators.stack"]
    }
    assert [n for n in core() if "agent.cli.demo" in GRAPH[n]] == ["agent.cli.main"]


def test_the_wheel_leaves_the_test_side_out() -> None:
    # setuptools' package finder: dotted package names matched against include/exclude patterns
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    find = setuptools["packages"]["find"]
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}

    def shipped(name: str) -> bool:
        included = any(fnmatchcase(name, p) for p in find["include"])
        return included and not any(fnmatchcase(name, p) for p in find.get("exclude", ()))

    assert {p for p in packages if not shipped(p)} == {p for p in packages if p.startswith(TEST_SIDE)}
    assert "agent" in packages and shipped("agent")
    # else setuptools ships the left-out packages' files anyway, as data of the agent package
    assert setuptools["include-package-data"] is False


# --- layers ------------------------------------------------------------------------------------
# core/ is pure: no I/O library, no clock, no logging; sync/ (the engine) reaches the systems it
# syncs only through agent.ports; neither imports the outer layers. The allowed sets are closed:
# a new import from a layer must be added here on purpose.

IO_LIBRARIES = {"aiohttp", "aiosqlite", "psycopg", "asyncio", "socket", "ssl", "urllib", "http", "requests",
                "msal", "sqlite3", "time", "logging", "random", "os", "subprocess", "threading"}  # fmt: skip
CORE_MAY_IMPORT = ("agent.core", "agent.errors")
SYNC_MAY_IMPORT = ("agent.core", "agent.errors", "agent.ports", "agent.sync", "agent.log", "agent.progress",
                   "agent.tasks")  # fmt: skip
PORTS_MAY_IMPORT = ("agent.core", "agent.store.base")


def external_imports(name: str) -> set[str]:
    """Top-level names of the non-agent modules ``name`` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found - {"agent", "__future__"}


def layer(prefix: str) -> list[str]:
    return [n for n in MODULES if n == prefix or n.startswith(prefix + ".")]


def outside(name: str, allowed: tuple[str, ...]) -> list[str]:
    return sorted(m for m in GRAPH[name] if not any(m == a or m.startswith(a + ".") for a in allowed))


def reach(name: str) -> set[str]:
    """Every agent module ``name`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for m in GRAPH[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_the_core_is_pure() -> None:
    assert layer("agent.core")
    problems = {}
    for name in layer("agent.core"):
        bad = sorted(external_imports(name) & IO_LIBRARIES) + outside(name, CORE_MAY_IMPORT)
        clock = [
            f"{node.lineno}: {ast.unparse(node)}"
            for node in ast.walk(ast.parse(MODULES[name].read_text()))
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("now", "utcnow", "today", "monotonic", "time")
        ]
        if bad or clock:
            problems[name] = bad + clock
    assert problems == {}


def test_the_engine_imports_ports_and_core_only() -> None:
    assert layer("agent.sync")
    direct = {n: outside(n, SYNC_MAY_IMPORT) for n in layer("agent.sync")}
    assert {n: found for n, found in direct.items() if found} == {}
    # nor through anything it imports: no connector, store implementation, app, CLI or test code
    reached = {m for n in layer("agent.sync") for m in reach(n)}
    assert (
        sorted(
            m
            for m in reached
            if m.startswith(("agent.connectors", "agent.app", "agent.cli", "agent.testing"))
        )
        == []
    )
    assert sorted(m for m in reached if m.startswith("agent.store")) == ["agent.store.base"]


def test_the_ports_name_records_and_the_store_interface_only() -> None:
    assert outside("agent.ports", PORTS_MAY_IMPORT) == []


def test_the_layer_checks_see_a_violation() -> None:
    GRAPH["agent.sync.cycle"].add("agent.connectors.http")
    try:
        assert outside("agent.sync.cycle", SYNC_MAY_IMPORT) == ["agent.connectors.http"]
    finally:
        GRAPH["agent.sync.cycle"].discard("agent.connectors.http")


def test_no_module_outside_the_test_side_reaches_500_lines() -> None:
    """The size the layout keeps (ARCHITECTURE.md): a module that grows past it holds two concerns.
    Measured as ``python -m agent.testing.sizes agent --exclude agent/testing`` measures it."""
    from agent.testing.sizes import measure

    modules, _classes, _functions = measure(AGENT, [(AGENT / "testing").as_posix()])
    too_big = [f"{Path(m.path).relative_to(ROOT)}: {m.lines} lines" for m in modules if m.lines >= 500]
    assert not too_big, "split these along their concerns: " + ", ".join(too_big)
