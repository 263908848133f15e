"""The one error tree (agent.errors): its docstring is the hierarchy, and it is the only one."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator
from typing import Any

import pytest

import agent
from agent import errors
from agent.errors import AgentError, DataError, HookFailed, PermanentError

TEST_SIDE = ("agent.emulators", "agent.bench", "agent.testing")
NOT_CORE = ("agent.__main__", "agent.demo", "agent.errors")


def documented_tree() -> dict[str, str]:
    """Class name -> parent name, read from the ASCII tree in the module docstring."""
    assert errors.__doc__ is not None
    lines = errors.__doc__.split("::", 1)[1].strip("\n").split("\n\n", 1)[0].splitlines()
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in lines:
        found = re.match(r"^[\s│├└─]*?(\w+)", line)
        assert found, line
        depth = found.start(1)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[found.group(1)] = stack[-1][1] if stack else ""
        stack.append((depth, found.group(1)))
    return parents


def test_the_docstring_tree_is_the_class_hierarchy() -> None:
    tree = documented_tree()
    classes = {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, AgentError) and cls.__module__ == errors.__name__
    }
    assert set(tree) == set(classes)
    for name, cls in classes.items():
        parent = next((b.__name__ for b in cls.__bases__ if issubclass(b, AgentError)), "")
        assert tree[name] == parent, name


def core_modules() -> Iterator[Any]:
    for info in pkgutil.walk_packages(agent.__path__, "agent."):
        if not info.name.startswith(TEST_SIDE) and info.name not in NOT_CORE:
            yield importlib.import_module(info.name)


def test_every_exception_class_of_the_agent_lives_in_errors() -> None:
    elsewhere = [
        f"{module.__name__}.{name}"
        for module in core_modules()
        for name, cls in vars(module).items()
        if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == module.__name__
    ]
    assert elsewhere == []


def test_data_errors_are_value_errors_and_hook_failures_data_errors() -> None:
    assert issubclass(DataError, ValueError) and issubclass(HookFailed, DataError)
    assert errors.ExitCode.CONFIG == errors.ConfigError([]).exit_code == 2
    assert errors.SafetyValveTripped("w", "c", "m").exit_code == errors.ExitCode.RESYNC == 7


def test_unreadable_answers_are_named_remote_errors() -> None:
    from agent.sentinel import parse_incident
    from agent.servicenow import _record

    with pytest.raises(errors.InvalidResponse, match="InvalidIncident") as sentinel:
        parse_incident({"name": "x", "properties": {}})
    with pytest.raises(errors.InvalidResponse, match="a record without sys_id") as snow:
        _record({"number": "INC0010001"})
    assert isinstance(sentinel.value, PermanentError) and isinstance(snow.value, PermanentError)
