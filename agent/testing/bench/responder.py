"""A lighter-weight responder: a recorded sync answered again, in a process of its own.

``python -m agent.testing.bench.responder RECORDING --latency SECONDS --directory DIR`` loads a
recording (:mod:`agent.testing.bench.replay`), makes a TLS CA and server certificate in ``DIR``
(the agent trusts the CA through ``ca_bundle``), listens on 127.0.0.1 with one port for each
server of the recording (Entra, Sentinel, each ServiceNow instance) and prints one JSON line:
``{"origins": {recorded origin: new origin}, "ca_file": ...}``. It answers every request after the
fixed latency with the finished bytes of the recorded answer: an asyncio protocol that reads the
request line, ``Content-Length`` and the body, with keep-alive, and nothing else (no web
framework, no routing, no JSON work but reading a write's unique key), so that its CPU per
request stays far below the emulators'.

Then it reads one JSON request per line on stdin and answers each on stdout: ``{"op": "stats"}``
(the recorded exchanges served so far by index, the misses, the connections accepted, its own
CPU time), ``{"op": "reset"}`` (every key starts from its first answer again, the counts from
zero: for the next fresh agent) and ``{"op": "exit"}``. :class:`ResponderProcess` drives it
from the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import orjson

from agent.testing.bench.replay import DateHeader, Script, load
from agent.testing.emulators.common import TLSMaterial

_MAX_HEAD = 1 << 16


class _Connection(asyncio.Protocol):
    """One client connection to one of the recorded servers."""

    def __init__(self, script: Script, origin: int, latency: float, date: DateHeader) -> None:
        self._script, self._origin, self._latency, self._date = script, origin, latency, date
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._script.connections += 1
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    self._refuse("request head too long")
                return
            lines = bytes(buffer[:end]).split(b"\r\n")
            parts = lines[0].split(b" ")
            if len(parts) != 3:
                self._refuse("malformed request line")
                return
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    if not value.strip().isdigit():
                        self._refuse("malformed Content-Length")
                        return
                    length = int(value)
                elif name == b"transfer-encoding":
                    self._refuse("chunked request bodies are not supported")
                    return
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
            total = end + 4 + length
            if len(buffer) < total:
                return
            body = bytes(buffer[end + 4 : total])
            del buffer[:total]
            head, rest = self._script.answer(self._origin, parts[0].decode(), parts[1].decode(), body)
            self._loop.call_later(self._latency, self._send, head, rest, close)

    def _send(self, head: bytes, rest: bytes, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(head + self._date(time.time()) + rest)
        if close:
            transport.close()

    def _refuse(self, why: str) -> None:
        """A request this responder cannot read: counted as a miss, answered 400, connection closed."""
        self._script.misses.append(f"unreadable request: {why}")
        if self._transport is not None:
            self._transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self._transport.close()


def cpu_seconds() -> float:
    """This process's CPU time (user and system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def serve(recording: Path, latency: float, directory: Path) -> None:
    """Listen, print where, then answer control requests until ``exit`` or end of input."""
    loop = asyncio.get_running_loop()
    recorded, exchanges = load(recording)
    tls = TLSMaterial(directory)
    context = tls.server_context()
    date = DateHeader()
    sockets = []
    for _ in recorded:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    origins = {o: f"https://127.0.0.1:{s.getsockname()[1]}" for o, s in zip(recorded, sockets, strict=True)}
    script = Script(recorded, exchanges, origins)
    servers = [
        await loop.create_server(partial(_Connection, script, index, latency, date), sock=sock, ssl=context)
        for index, sock in enumerate(sockets)
    ]
    _answer({"origins": origins, "ca_file": str(tls.ca_file), "exchanges": len(exchanges)})
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.buffer.readline)
            if not line.strip():
                return
            op = orjson.loads(line).get("op")
            if op == "exit":
                _answer({"op": op})
                return
            if op == "reset":
                script.reset()
                _answer({"op": op})
            elif op == "stats":
                _answer(
                    {
                        "op": op,
                        "served": {str(k): v for k, v in script.served.items()},
                        "connections": script.connections,
                        "misses": len(script.misses),
                        "missed": script.misses[:20],
                        "cpu": cpu_seconds(),
                    }
                )
            else:
                _answer({"op": op, "error": f"unknown op {op!r}"})
    finally:
        for server in servers:
            server.close()


def _answer(obj: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(obj) + b"\n")
    sys.stdout.buffer.flush()


class ResponderProcess:
    """Drives one responder process: ``await ResponderProcess.start(...)``, ``stats``, ``stop``."""

    def __init__(self, proc: asyncio.subprocess.Process, hello: dict[str, Any]) -> None:
        self._proc = proc
        self.origins: dict[str, str] = dict(hello["origins"])
        self.ca_file = Path(hello["ca_file"])
        self.pid = proc.pid

    @classmethod
    async def start(
        cls, recording: Path, latency: float, directory: Path, stderr_path: Path
    ) -> ResponderProcess:
        """Start the responder on a recording; returns once it listens."""
        with stderr_path.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agent.testing.bench.responder",
                str(recording),
                "--latency",
                repr(latency),
                "--directory",
                str(directory),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            code = await proc.wait()
            raise RuntimeError(f"the responder exited ({code}) before listening; see {stderr_path}")
        return cls(proc, orjson.loads(line))

    async def request(self, op: str) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(orjson.dumps({"op": op}) + b"\n")
        await self._proc.stdin.drain()
        line = await self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the responder exited ({await self._proc.wait()}) during {op!r}")
        answer: dict[str, Any] = orjson.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the responder refused {op!r}: {answer['error']}")
        return answer

    async def reset(self) -> None:
        await self.request("reset")

    async def stats(self) -> dict[str, Any]:
        """``served`` ({exchange index: times}), ``misses``, ``missed`` (the first few) and ``cpu``."""
        return await self.request("stats")

    async def stop(self) -> None:
        if self._proc.returncode is None:
            await self.request("exit")
            await self._proc.wait()

    async def kill(self) -> None:
        if self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m agent.testing.bench.responder",
        description="Answer a recorded sync again over HTTPS on 127.0.0.1, after a fixed latency.",
    )
    p.add_argument("recording", type=Path, help="a recording written by the bench")
    p.add_argument("--latency", type=float, default=0.020, help="seconds before each answer (0.020)")
    p.add_argument("--directory", type=Path, required=True, help="where to write the TLS CA")
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.recording, args.latency, args.directory))
    else:
        uvloop.run(serve(args.recording, args.latency, args.directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
