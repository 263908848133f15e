from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from agent.testing.emulators.stack import EmulatorStack
from tests.e2e import Env
from tests.ops_run import OpsRun, capture
from tests.pg import Cluster, cluster
from tests.sentinel_spec import require_spec

settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile("soak", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def sentinel_spec() -> Path:
    """Microsoft's Sentinel OpenAPI ``stable`` folder; the test fails when it is missing."""
    return require_spec()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    """A started emulator stack with one workspace ``soc`` and an agent config pointing at it."""
    async with EmulatorStack(directory=tmp_path / "emu") as stack:
        stack.add_workspace("soc")
        cfg = stack.write_config(
            tmp_path / "agent.ini",
            state_db=tmp_path / "state.db",
            workspaces=["soc"],
            extra={"agent": {"max_concurrency": "4"}},
        )
        yield Env(stack, tmp_path, cfg, ["soc"])
        assert_no_silent_drops(stack)


def assert_no_silent_drops(stack: EmulatorStack) -> None:
    """No query term on a missing field (it widens the query) and no write to a missing field (it
    is dropped) reached an emulated instance (REFERENCE C.2, C.3). A test that provokes one on
    purpose asserts on it and clears the list."""
    for name, snow in stack.snow.items():
        assert not snow.dropped_terms, f"[{name}] the instance ignored query terms: {snow.dropped_terms}"
        assert not snow.ignored_fields, f"[{name}] the instance ignored written fields: {snow.ignored_fields}"


@pytest.fixture(scope="session")
def ops_run(tmp_path_factory: pytest.TempPathFactory) -> OpsRun:
    """One real ``run`` of the agent against the emulators, for the operations kit's tests."""
    return capture(tmp_path_factory.mktemp("ops-run"))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A throw-away PostgreSQL server for the whole test session (see tests/pg.py)."""
    with cluster() as running:
        yield running
