"""A recorded initial sync, and the table that answers it again without the emulators.

The emulators record every exchange whole when the bench switches their recorder's
``exchanges`` on (:class:`~agent.testing.emulators.common.Exchange`). :func:`save` writes them to
a file; :class:`Script` turns that file into finished HTTP/1.1 answers, keyed so that a fresh
agent's requests find the answer the emulators gave to the same request of the recorded run:

* method, origin (which server) and request target, with what differs from one run of a fresh
  agent to the next made equal (:func:`normalise`): the times in ``$filter`` and
  ``sysparm_query`` (computed from the clock), and the order of the values of an ``IN`` list
  (built in the order concurrent tasks finished; the set, not its order, decides the answer);
* for a write (POST, PUT, PATCH), also the ticket's unique key (``correlation_id``) in its body,
  so that many creates on one table path each get their own ticket back.

Requests with the same key are answered in recorded order, the last answer repeated once they
are used up. A request with no recorded answer is a miss: answered 404 with a body saying so and
counted, never answered with something else.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson

from agent.testing.emulators.common import Call, Exchange

__all__ = ["Key", "Script", "key", "load", "normalise", "save"]

Key = tuple[int, str, str, str]  # (origin index, method, normalised target, identity)

_WRITES = frozenset({"POST", "PUT", "PATCH"})
# ISO 8601 / ServiceNow date-times as the agent writes them into queries, raw or URL-encoded
# (``2026-11-06T08:36:54.2720240Z``, ``2026-12-06%2008:34:54``, ``2026-12-06 08:34:54``).
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:T|%20|\+| )\d{2}(?::|%3A)\d{2}(?::|%3A)\d{2}(?:\.\d+)?Z?")
# An encoded-query ``IN`` list: ``fieldIN a,b,c`` up to the next ``^`` (raw or %5E) or parameter.
_IN_LIST = re.compile(r"(?P<field>[A-Za-z_]+)IN(?P<values>[^&^%]+(?:%2C[^&^%]+)*)")
# Response headers the server sets itself (length, framing, connection) or per answer (Date).
_OWN_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
)


def normalise(target: str) -> str:
    """The request target with the values that differ between two runs of a fresh agent made
    equal: every date-time becomes ``{time}`` and every ``IN`` list is sorted."""
    target = _TIME.sub("{time}", target)
    return _IN_LIST.sub(_sorted_in, target)


def _sorted_in(match: re.Match[str]) -> str:
    values = match.group("values")
    sep = "%2C" if "%2C" in values else ","
    return f"{match.group('field')}IN{sep.join(sorted(values.split(sep)))}"


def identity(method: str, body: bytes) -> str:
    """A write's stable identity in its body: the ticket's unique key (``correlation_id``)."""
    if method not in _WRITES or not body.startswith(b"{"):
        return ""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    value = doc.get("correlation_id") if isinstance(doc, dict) else None
    return str(value) if value else ""


def key(origin: int, method: str, target: str, body: bytes) -> Key:
    return (origin, method, normalise(target), identity(method, body))


# --- the recording file ---------------------------------------------------------------------------


def save(path: Path, exchanges: Sequence[Exchange]) -> None:
    """Write the recorded exchanges (bodies base64-encoded) to ``path``."""
    origins: list[str] = []
    rows = []
    for x in exchanges:
        if x.origin not in origins:
            origins.append(x.origin)
        c = x.call
        rows.append(
            {
                "origin": origins.index(x.origin),
                "target": x.target,
                "body": _b64(x.body),
                "headers": list(x.headers),
                "response": _b64(x.response),
                "call": [c.system, c.method, c.route, c.path, c.status, c.instance],
            }
        )
    path.write_bytes(orjson.dumps({"origins": origins, "exchanges": rows}))


@dataclass(frozen=True)
class Recorded:
    """One exchange read back from a recording."""

    origin: int
    target: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    response: bytes
    call: Call


def load(path: Path) -> tuple[list[str], list[Recorded]]:
    """(origins, exchanges) of a recording written by :func:`save`."""
    doc: dict[str, Any] = orjson.loads(path.read_bytes())
    out = []
    for row in doc["exchanges"]:
        system, method, route, call_path, status, instance = row["call"]
        out.append(
            Recorded(
                int(row["origin"]),
                str(row["target"]),
                base64.b64decode(row["body"]),
                tuple((str(k), str(v)) for k, v in row["headers"]),
                base64.b64decode(row["response"]),
                Call(system, method, route, call_path, int(status), instance),
            )
        )
    return [str(o) for o in doc["origins"]], out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- answering ----------------------------------------------------------------------------------


def _rewriter(origins: Mapping[str, str]) -> re.Pattern[bytes] | None:
    if not origins:
        return None
    alternatives = b"|".join(re.escape(o.encode()) for o in sorted(origins, key=len, reverse=True))
    return re.compile(b"(?:" + alternatives + rb")(?![0-9])")


def response_bytes(status: int, headers: Iterable[tuple[str, str]], body: bytes) -> tuple[bytes, bytes]:
    """An HTTP/1.1 answer as (status line and headers up to the ``Date`` header, the rest)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in _OWN_HEADERS]
    lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
    return head, b"\r\n" + body


@dataclass
class Script:
    """Every recorded answer, finished, by :func:`key`; what was served and what was missed.

    ``origins`` maps each recorded origin to the one answering now: URLs of the recorded
    servers in bodies and headers (token endpoints, next-page links) are rewritten to it.
    """

    recorded_origins: list[str]
    exchanges: list[Recorded]
    origins: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pattern = _rewriter(self.origins)

        def rewrite(data: bytes) -> bytes:
            if pattern is None:
                return data
            return pattern.sub(lambda m: self.origins[m.group(0).decode()].encode(), data)

        self._answers: dict[Key, list[tuple[int, bytes, bytes]]] = {}
        for index, x in enumerate(self.exchanges):
            headers = [(k, rewrite(v.encode("latin-1")).decode("latin-1")) for k, v in x.headers]
            head, rest = response_bytes(x.call.status, headers, rewrite(x.response))
            k = key(x.origin, x.call.method, x.target, x.body)
            self._answers.setdefault(k, []).append((index, head, rest))
        self.reset()

    def reset(self) -> None:
        """Start again from each key's first answer, with nothing served, missed or connected."""
        self._next: dict[Key, int] = {}
        self.served: dict[int, int] = {}  # exchange index -> times served
        self.misses: list[str] = []
        self.connections = 0  # counted by the server

    def answer(self, origin: int, method: str, target: str, body: bytes) -> tuple[bytes, bytes]:
        """The answer to a request, as (head, rest): :func:`response_bytes` without the ``Date``."""
        k = key(origin, method, target, body)
        answers = self._answers.get(k)
        if not answers:
            self.misses.append(f"{method} {self.recorded_origins[origin]}{target}")
            text = orjson.dumps(
                {"error": "no recorded answer for this request", "request": f"{method} {target}"}
            )
            return response_bytes(404, [("Content-Type", "application/json")], text)
        position = self._next.get(k, 0)
        self._next[k] = position + 1
        index, head, rest = answers[min(position, len(answers) - 1)]
        self.served[index] = self.served.get(index, 0) + 1
        return head, rest


class DateHeader:
    """``Date: ...`` for the current second, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def __call__(self, now: float) -> bytes:
        second = int(now)
        if second != self._second:
            self._second = second
            self._line = f"Date: {formatdate(second, usegmt=True)}\r\n".encode("ascii")
        return self._line
