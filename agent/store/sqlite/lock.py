"""Single-instance lock on the state database.

Two agents sharing one shadow would each believe the other's writes were analyst edits. The
lock is an ``flock`` on ``<state_db>.lock`` (released by the kernel when the process dies,
so a crash never leaves a stale lock) whose content names the holder: PID, host, start time
and an expiry that the running agent renews. The content is for people reading ``status``;
the flock is what excludes.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from types import TracebackType

import orjson

from agent.errors import LockHeld

# The holder record is padded to this size (JSON ignores trailing blanks); a host name is at most
# 64 bytes on Linux, so a record never outgrows it and one write always replaces all of it.
RECORD_SIZE = 512


class StateLock:
    """``with StateLock(db_path, ttl): ...`` or ``acquire()`` / ``release()``."""

    def __init__(self, db_path: str | os.PathLike[str], ttl: float = 600.0) -> None:
        self.path = Path(str(db_path) + ".lock")
        self.ttl = ttl
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.holder()
            os.close(fd)
            who = f"PID {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
            raise LockHeld(f"state database {self.path.with_suffix('')} is in use by {who}") from None
        self._fd = fd
        self.renew()

    def renew(self) -> None:
        """Rewrite the holder record with a fresh expiry."""
        if self._fd is None:
            return
        now = time.time()
        body = orjson.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": now, "expires": now + self.ttl}
        )
        # One write of a fixed size replaces the whole record: truncating first would let a reader
        # (``status``, a second agent) see an empty file between the two calls and name no holder.
        os.pwrite(self._fd, body.ljust(max(RECORD_SIZE, len(body))), 0)

    def holder(self) -> dict[str, object]:
        try:
            data = orjson.loads(self.path.read_bytes() or b"{}")
        except (OSError, orjson.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def held_by_other(self) -> bool:
        """True when another live process holds the lock (used by commands that only read)."""
        if self._fd is not None:
            return False
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
