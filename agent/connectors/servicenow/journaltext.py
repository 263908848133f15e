"""Journal entries read from a record's display value, for an integration user who cannot read
``sys_journal_field`` (REFERENCE E.6). Pure: no I/O, no clock.

With ``sysparm_display_value=all`` and a journal field (``work_notes``, ``comments``) in
``sysparm_fields``, the display value holds every entry of that field, newest first, each as::

    <date time> - <author's display name> (<field label>)
    <text>
    <blank line>

The date is in the integration user's time zone and date format. The same answer carries the
record's ``sys_updated_on`` both raw (UTC) and displayed, so :func:`learn` finds the format and
the offset from that pair (offsets in quarter hours, up to 14 hours either way) and
:func:`parse` turns the entries' dates into UTC. An offset learnt now is applied to every entry;
an entry written on the other side of a daylight-saving change reads an hour off, which is
harmless: dates only order entries and print in the Sentinel comment header.

Entries have no sys_id here, so each gets a stable key of its own (:func:`entry_key`): the
record, the field, a hash of its text and its place among the entries of that field with the
same text (oldest first). Journals only grow, so the key never changes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

DISPLAY_KEY = "display:"
"""Prefix of the key of an entry read from a display value (never a 32-hex sys_id)."""

_DATES = (
    ("yyyy-MM-dd", "%Y-%m-%d"),
    ("dd-MM-yyyy", "%d-%m-%Y"),
    ("MM-dd-yyyy", "%m-%d-%Y"),
    ("dd/MM/yyyy", "%d/%m/%Y"),
    ("MM/dd/yyyy", "%m/%d/%Y"),
    ("dd.MM.yyyy", "%d.%m.%Y"),
    ("yyyy/MM/dd", "%Y/%m/%d"),
    ("yyyy.MM.dd", "%Y.%m.%d"),
)
_TIMES = (("HH:mm:ss", "%H:%M:%S"), ("hh:mm:ss a", "%I:%M:%S %p"), ("HH:mm", "%H:%M"))
FORMATS: tuple[tuple[str, str], ...] = tuple(
    (f"{d} {t}", f"{dp} {tp}") for d, dp in _DATES for t, tp in _TIMES
)
"""ServiceNow date-time formats a user may choose, (their pattern, its strptime form); the
preferred reading of an ambiguous date comes first."""
_QUARTER = 15 * 60
_MAX_OFFSET = 14 * 3600
_HEADER = re.compile(r"^(?P<when>\S.*?) - (?P<who>.+) \((?P<label>[^()\n]+)\)$")


@dataclass(frozen=True, slots=True)
class UserClock:
    """How the integration user sees dates: ``strptime`` format and offset from UTC."""

    format: str
    offset: timedelta

    def to_utc(self, text: str) -> datetime | None:
        try:
            local = datetime.strptime(text.strip(), self.format)
        except ValueError:
            return None
        return (local - self.offset).replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DisplayEntry:
    """One entry of a display value: when (UTC), who (display name), the field's label, text."""

    created_on: datetime
    author: str
    label: str
    text: str


def learn(samples: Iterable[tuple[datetime, str]]) -> UserClock | None:
    """The format and offset that explain every ``(raw UTC time, displayed text)`` pair, or None.

    Of several formats that fit (a day of 12 or less reads both ways), the earlier in
    :data:`FORMATS` wins; a sample that fits none is ignored.
    """
    pairs = [(raw.astimezone(UTC).replace(tzinfo=None), shown.strip()) for raw, shown in samples if shown]
    for _pattern, fmt in FORMATS:
        offsets = set()
        for raw, shown in pairs:
            try:
                local = datetime.strptime(shown, fmt)
            except ValueError:
                break
            seconds = (local - raw).total_seconds()
            if seconds % _QUARTER and not fmt.endswith("%M"):
                break
            if abs(seconds) > _MAX_OFFSET + 60:
                break
            offsets.add(round(seconds / _QUARTER) * _QUARTER)
        else:
            if pairs and len(offsets) == 1:
                return UserClock(fmt, timedelta(seconds=offsets.pop()))
    return None


def parse(text: str, clock: UserClock) -> list[DisplayEntry]:
    """The entries of one journal field's display value, oldest first.

    A line is an entry's header when it reads ``<date> - <name> (<label>)`` with a date in the
    user's format and follows a blank line (or starts the value); the text runs to the next one.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    found: list[tuple[DisplayEntry, list[str]]] = []
    previous_blank = True
    for line in lines:
        header = _HEADER.match(line) if previous_blank else None
        when = clock.to_utc(header["when"]) if header else None
        if header is not None and when is not None:
            found.append((DisplayEntry(when, header["who"].strip(), header["label"].strip(), ""), []))
        elif found:
            found[-1][1].append(line)
        previous_blank = not line.strip()
    entries = [
        DisplayEntry(e.created_on, e.author, e.label, "\n".join(body).strip("\n")) for e, body in found
    ]
    entries.reverse()  # the display value is newest first
    return entries


def entry_key(table: str, record: str, element: str, text: str, occurrence: int) -> str:
    """The stable key of an entry: record, field, text and its place among equal texts."""
    digest = hashlib.sha256(f"{table}:{record}:{element}:{occurrence}:{_norm(text)}".encode()).hexdigest()
    return DISPLAY_KEY + digest[:32]


def keyed(
    table: str, record: str, element: str, entries: Sequence[DisplayEntry]
) -> list[tuple[str, DisplayEntry]]:
    """``(key, entry)`` for the entries of one field, oldest first (see :func:`entry_key`)."""
    seen: dict[str, int] = {}
    out = []
    for entry in entries:
        norm = _norm(entry.text)
        count = seen.get(norm, 0)
        seen[norm] = count + 1
        out.append((entry_key(table, record, element, entry.text, count), entry))
    return out


def _norm(text: str) -> str:
    return text.replace("\r\n", "\n").strip()
