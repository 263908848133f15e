"""Single instance: one agent per state database, named when another one tries; a killed agent
leaves no stale lock; ``status`` tells whether (and which) agent runs."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from pathlib import Path

import orjson
import pytest

from agent.store.sqlite.lock import StateLock
from tests.agent_process import AgentProcess
from tests.e2e import Env


async def _status(config: Path) -> dict[str, object]:
    async with AgentProcess(config, "status", "--json") as status:
        assert await status.wait() == 0, status.output()
    report: dict[str, object] = orjson.loads("\n".join(status.stdout_text))
    return report


@pytest.mark.timeout(120)  # a lock that is never freed is the failure
async def test_second_agent_is_refused_and_a_killed_one_frees_the_lock(env: Env) -> None:
    env.rewrite({"agent": {"poll_interval": "0.2s"}})
    env.ws().create_incident(title="one", labels=["snow"])
    async with AgentProcess(env.config_path, "run") as first:
        await first.wait_for(lambda e: e.get("event") == "cycle_summary")
        holder = StateLock(env.tmp / "state.db").holder()
        assert holder["pid"] == first.pid and float(str(holder["expires"])) > time.time()
        for command in (["once"], ["run"], ["backfill", "soc", "--since=-1d"]):
            async with AgentProcess(env.config_path, *command) as second:
                assert await second.wait() == 1, second.output()
            [refused] = second.named("lock_held")
            assert f"PID {first.pid}" in str(refused["message"]), refused
            assert str(env.tmp / "state.db") in str(refused["message"])
            assert not second.named("cycle_summary")  # it did nothing at all
        report = await _status(env.config_path)
        assert report["agent_running"] is True
        assert report["agent"] == {"pid": first.pid, "host": os.uname().nodename}
        first.kill(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
    # the kernel released the flock with the process: no stale lock, no manual clean-up
    assert (await _status(env.config_path))["agent_running"] is False
    async with AgentProcess(env.config_path, "once") as again:
        assert await again.wait() == 0, again.output()
    assert again.named("cycle_summary")
    assert len(env.snow_records()) == 1


async def test_lock_file_is_private_and_released_on_clean_exit(env: Env) -> None:
    lock_path = env.tmp / "state.db.lock"
    old = os.umask(0o022)
    try:
        async with AgentProcess(env.config_path, "once") as agent:
            assert await agent.wait() == 0, agent.output()
    finally:
        os.umask(old)
    assert stat.S_IMODE(lock_path.stat().st_mode) == 0o600
    assert lock_path.read_bytes() == b""  # a clean exit clears the holder record
    lock = StateLock(env.tmp / "state.db")
    assert not lock.held_by_other()
    with lock:
        assert lock.holder()["pid"] == os.getpid()
        assert not lock.held_by_other()  # our own lock is not "another agent"


def test_a_reader_never_sees_the_holder_record_empty_while_it_is_renewed(tmp_path: Path) -> None:
    """``status`` read the record between the truncate and the write of a renewal and named no holder
    (seen under load with a 0.2 s poll); a renewal is now one write of the whole record."""
    lock = StateLock(tmp_path / "state.db")
    seen: list[object] = []
    stop = threading.Event()

    def read() -> None:
        reader = StateLock(tmp_path / "state.db")
        while not stop.is_set():
            seen.append(reader.holder().get("pid"))

    with lock:
        thread = threading.Thread(target=read)
        thread.start()
        try:
            for _ in range(3000):
                lock.renew()
        finally:
            stop.set()
            thread.join()
    assert seen and set(seen) == {os.getpid()}
