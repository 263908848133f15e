"""The rsyslog recipe in contrib/: the real ``rsyslogd`` accepts it (``-N1``) and, run in the
foreground without privileges (as ``nobody`` when the tests run as root) with a work directory
and pid file of its own, forwards the agent's log lines to a local TCP and a local TLS listener
byte for byte.

Only the values the recipe marks EDIT (and the log file's path) are changed for the run; the
listener's certificate names the recipe's own permitted peer, so the TLS run checks the peer
name as a real collector's would be checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import pwd
import signal
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from agent.log import Logger
from tests.ops_run import OpsRun
from tests.os_tools import run, tool

RECIPE = Path(__file__).parents[1] / "contrib" / "rsyslog" / "sentinel-snow-sync.conf"
PEER = "siem.example.net"
LOG_FILE = "/var/log/sentinel-snow-sync/agent.log"
CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
DEADLINE = 30.0  # seconds for rsyslogd to deliver; it normally takes well under one


def recipe_for(tmp: Path, *, port: int, ca_file: Path | None) -> Path:
    """The recipe with the log file, target, port and CA (or plain TCP) of this test."""
    text = RECIPE.read_text()
    for old, new in (
        (f'File="{LOG_FILE}"', f'File="{tmp / "agent.log"}"'),
        (f'Target="{PEER}"', 'Target="127.0.0.1"'),
        ('Port="6514"', f'Port="{port}"'),
        (f'StreamDriver.CAFile="{CA_FILE}"', f'StreamDriver.CAFile="{ca_file}"'),
    ):
        assert text.count(old) == 1, f"the recipe no longer has {old}"
        text = text.replace(old, new)
    if ca_file is None:  # what the recipe says to do for plain TCP
        lines = [line for line in text.splitlines() if not line.strip().startswith("StreamDriver")]
        assert len(text.splitlines()) - len(lines) == 5
        text = "\n".join(lines) + "\n"
    path = tmp / "recipe.conf"
    path.write_text(text)
    return path


def main_config(tmp: Path, recipe: Path) -> Path:
    """What /etc/rsyslog.conf provides around a drop-in: here only a work directory of our own."""
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    path = tmp / "rsyslog.conf"
    path.write_text(f'global(workDirectory="{work}")\ninclude(file="{recipe}")\n')
    return path


def test_rsyslogd_accepts_the_recipe(tmp_path: Path) -> None:
    result = run([tool("rsyslogd"), "-N1", "-f", main_config(tmp_path, RECIPE)])
    assert result.returncode == 0, result.stdout
    assert "End of config validation run" in result.stdout


def test_rsyslogd_rejects_a_typo(tmp_path: Path) -> None:
    """-N1 is a real check: a misspelt parameter fails it."""
    bad = tmp_path / "bad.conf"
    bad.write_text(RECIPE.read_text().replace("reopenOnTruncate", "reopenOnTruncat"))
    result = run([tool("rsyslogd"), "-N1", "-f", main_config(tmp_path, bad)])
    assert result.returncode != 0
    assert "parameter 'reopenOnTruncat' not known" in result.stdout


@dataclass
class Listener:
    """A collector on 127.0.0.1 that keeps every byte it receives."""

    port: int
    received: bytearray
    arrived: asyncio.Event

    async def wait_for(self, size: int) -> bytes:
        async with asyncio.timeout(DEADLINE):
            while len(self.received) < size:
                self.arrived.clear()
                await self.arrived.wait()
        return bytes(self.received)


@contextlib.asynccontextmanager
async def listener(tls: ssl.SSLContext | None) -> AsyncIterator[Listener]:
    received = bytearray()
    arrived = asyncio.Event()

    async def collect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := await reader.read(65536):
                received.extend(chunk)
                arrived.set()
        writer.close()

    server = await asyncio.start_server(collect, "127.0.0.1", 0, ssl=tls)
    try:
        yield Listener(server.sockets[0].getsockname()[1], received, arrived)
    finally:
        server.close()
        await server.wait_closed()


def unprivileged() -> list[str]:
    """The command prefix that runs a program as ``nobody`` when the tests run as root (CI)."""
    if os.geteuid() != 0:
        return []
    user = pwd.getpwnam("nobody")
    return [tool("setpriv"), f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]


@pytest.fixture
def rundir(tmp_path: Path) -> Iterator[Path]:
    """A directory for one rsyslogd run that ``nobody`` may use when the tests run as root."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="rsyslog-test-") as name:
        yield Path(name)


def hand_over(directory: Path) -> None:
    """Give everything in ``directory`` to the user rsyslogd runs as."""
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam("nobody")
    for path in [directory, *directory.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)


@contextlib.asynccontextmanager
async def rsyslogd(tmp: Path, config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """rsyslogd in the foreground (-n) without privileges, with its own work directory and pid
    file in ``tmp``; stopped with SIGTERM."""
    hand_over(tmp)
    proc = await asyncio.create_subprocess_exec(
        *unprivileged(),
        tool("rsyslogd"),
        "-n",
        "-f",
        str(config),
        "-i",
        str(tmp / "rsyslogd.pid"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(DEADLINE):
            await proc.communicate()


def _uid(pid: int) -> int:
    """The effective user id of a running process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])
    raise AssertionError(f"no Uid line for {pid}")


def long_lines() -> bytes:
    """Lines the agent's own logger renders that the 8k default would cut or a charset would
    change: an incident with 400 alerts, and a non-ASCII value."""
    out = io.StringIO()
    logger = Logger()
    logger.configure(stream=out)
    alerts = [f"{i:08x}-0000-4000-8000-{i:012x}" for i in range(400)]
    logger.info("alerts_to_snow", workspace="soc", incident="5b21", direction="to_snow", alerts=alerts)
    logger.warning(
        "value_unmapped", workspace="soc", field="status", side="servicenow", value="Résolu – 保留"
    )
    text = out.getvalue()
    assert len(text.splitlines()[0]) > 8192
    return text.encode()


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_rsyslogd_forwards_every_line_unchanged(transport: str, rundir: Path, ops_run: OpsRun) -> None:
    tmp_path = rundir
    tls: ssl.SSLContext | None = None
    ca_file: Path | None = None
    if transport == "tls":
        ca = trustme.CA()
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(PEER).configure_cert(tls)
    cut = ops_run.log.rindex(b"\n", 0, len(ops_run.log) // 2) + 1
    first, rest = ops_run.log[:cut], ops_run.log[cut:] + long_lines()
    expected = first + rest
    log_file = tmp_path / "agent.log"
    log_file.write_bytes(first)  # already there when rsyslogd starts
    async with listener(tls) as collector:
        config = main_config(tmp_path, recipe_for(tmp_path, port=collector.port, ca_file=ca_file))
        async with rsyslogd(tmp_path, config) as proc:
            with log_file.open("ab") as handle:  # appended while it runs, as the agent does
                handle.write(rest)
            try:
                got = await collector.wait_for(len(expected))
            except TimeoutError:
                proc.send_signal(signal.SIGTERM)
                output = (await proc.communicate())[0].decode(errors="replace")
                pytest.fail(
                    f"rsyslogd delivered {len(collector.received)} of {len(expected)} bytes:\n{output}"
                )
            if unprivileged():  # it delivered, so it runs: as nobody, not as root
                assert _uid(proc.pid) == pwd.getpwnam("nobody").pw_uid
    assert got == expected
