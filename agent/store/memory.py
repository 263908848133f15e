"""A state store in the process's memory (``state = memory:``), for engine tests and trials.

It keeps the same rules as the database stores (the contract suite checks it with them): the
same uniqueness, the same validation, whole-or-nothing writes (every check runs before the
first change), and values returned as copies so a caller cannot change what is stored.
Nothing survives the process.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import orjson

from agent.core.records import UNSET, CommentLink, Failure, Link, Tombstone, Unset, Watermark
from agent.store import checks as R

_Key = tuple[str, str, str]  # (instance, workspace, incident)
PAGE = 500


@dataclass(frozen=True, slots=True)
class _Cycle:
    id: int
    instance: str
    workspace: str
    started: datetime
    finished: datetime
    ok: bool
    summary: bytes


class MemoryStore:
    """Every table a dict; a write checks everything before it changes anything."""

    SCHEMA_VERSION = 1

    def __init__(self) -> None:
        self.links: dict[_Key, Link] = {}
        self.comments: dict[_Key, list[CommentLink]] = {}
        self.watermarks: dict[tuple[str, str, str], Watermark] = {}
        self.failure_rows: dict[_Key, Failure] = {}
        self.tombstones: dict[_Key, Tombstone] = {}
        self.marks: dict[tuple[str, str, str], tuple[str, datetime]] = {}
        self.conflict_log: list[dict[str, Any]] = []
        self.cycles: list[_Cycle] = []
        self._ids = itertools.count(1)
        self._by_sys_id: dict[tuple[str, str], _Key] = {}
        self._journals: set[tuple[str, str]] = set()

    @classmethod
    async def open(cls, target: str = "") -> MemoryStore:
        """A new, empty store (``target`` is ignored: every ``memory:`` store is its own)."""
        return cls()

    @property
    def location(self) -> str:
        return "memory:"

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def schema_version(self) -> int:
        return self.SCHEMA_VERSION

    # --- links -----------------------------------------------------------------------------------

    async def get_links(self, instance: str, workspace: str, incidents: Iterable[str]) -> dict[str, Link]:
        found = (self.links.get((instance, workspace, name)) for name in incidents)
        return {link.incident: link for link in found if link is not None}

    async def get_links_by_sys_id(self, instance: str, sys_ids: Iterable[str]) -> dict[str, Link]:
        wanted = set(sys_ids)
        return {x.sys_id: x for x in self.links.values() if x.instance == instance and x.sys_id in wanted}

    async def iter_links(
        self, instance: str, workspace: str, *, open_only: bool = False
    ) -> AsyncIterator[Link]:
        after = ""
        while True:
            page = sorted(
                (x for x in self._workspace_links(instance, workspace) if x.incident > after),
                key=lambda x: x.incident,
            )[:PAGE]
            for link in page:
                if link.open or not open_only:
                    yield link
            if len(page) < PAGE:
                return
            after = page[-1].incident

    async def count_links(self, instance: str, workspace: str) -> tuple[int, int]:
        links = list(self._workspace_links(instance, workspace))
        return len(links), sum(1 for x in links if x.open)

    async def save_link(
        self,
        link: Link,
        *,
        comment_links: Sequence[CommentLink] = (),
        conflicts: Sequence[tuple[str, str, str, str]] = (),
        now: datetime | None = None,
    ) -> None:
        key = _key(link)
        for c in comment_links:
            if _key(c) != key:
                raise ValueError(f"comment link {c.sentinel_comment} belongs to another incident")
        at = _utc(now or datetime.now(UTC))
        stored = self._checked_links([link])[0]
        self._check_new_comments(comment_links)
        self._put_link(stored)
        for c in comment_links:
            self._add_comment(c)
        for field, sentinel, servicenow, winner in conflicts:
            entry = {"at": at, "instance": link.instance, "workspace": link.workspace}
            entry |= {"incident": link.incident, "field": field, "sentinel": sentinel}
            self.conflict_log.append(entry | {"servicenow": servicenow, "winner": winner})
        del self.conflict_log[: max(0, len(self.conflict_log) - R.CONFLICTS_KEPT)]
        self.failure_rows.pop(key, None)

    async def save_links(self, links: Sequence[Link]) -> None:
        for stored in self._checked_links(links):
            self._put_link(stored)
            self.failure_rows.pop(_key(stored), None)

    async def delete_link(self, instance: str, workspace: str, incident: str) -> None:
        key = (instance, workspace, incident)
        old = self.links.pop(key, None)
        if old is not None:
            self._by_sys_id.pop((old.instance, old.sys_id), None)
        self._drop_comments(key, lambda c: False)
        self.comments.pop(key, None)
        self.failure_rows.pop(key, None)

    async def move_link(
        self, instance: str, workspace: str, incident: str, link: Link, comment_links: Sequence[CommentLink]
    ) -> None:
        key = (instance, workspace, incident)
        old = (self.links.get(key), list(self.comments.get(key, [])), self.failure_rows.get(key))
        await self.delete_link(*key)
        try:
            await self.save_link(link, comment_links=comment_links)
        except BaseException:
            # All or nothing, as a database transaction: put the old link back.
            if old[0] is not None:
                self._put_link(old[0])
            for c in old[1]:
                self._add_comment(c)
            if old[2] is not None:
                self.failure_rows[key] = old[2]
            raise

    async def links_by_number(self, instance: str, workspace: str, numbers: Iterable[str]) -> dict[str, Link]:
        wanted = set(numbers)
        return {x.number: x for x in self._workspace_links(instance, workspace) if x.number in wanted}

    # --- tombstones ------------------------------------------------------------------------------

    async def unlink(
        self, instance: str, workspace: str, incident: str, *, reason: str, now: datetime
    ) -> Link | None:
        link = self.links.get((instance, workspace, incident))
        sys_id, number = (link.sys_id, link.number) if link else ("", "")
        tombstone = Tombstone(incident, sys_id, number, reason, _utc(now))
        self.tombstones[(instance, workspace, incident)] = tombstone
        await self.delete_link(instance, workspace, incident)
        return link

    async def unlinked(
        self, instance: str, workspace: str, incidents: Iterable[str] | None = None
    ) -> dict[str, Tombstone]:
        wanted = None if incidents is None else set(incidents)
        rows = [
            t
            for (i, w, name), t in self.tombstones.items()
            if (i, w) == (instance, workspace) and (wanted is None or name in wanted)
        ]
        return {t.incident: t for t in sorted(rows, key=lambda t: (t.at, t.incident))}

    async def forget_unlinked(self, instance: str, workspace: str, incident: str) -> bool:
        return self.tombstones.pop((instance, workspace, incident), None) is not None

    # --- comment links ---------------------------------------------------------------------------

    async def comment_links(self, instance: str, workspace: str, incident: str) -> list[CommentLink]:
        return sorted(self.comments.get((instance, workspace, incident), []), key=lambda c: c.created_at)

    async def add_comment_link(self, link: CommentLink) -> None:
        self._check_new_comments([link])
        self._add_comment(link)

    async def unconfirmed_comment_links(self, instance: str, workspace: str) -> list[CommentLink]:
        rows = [
            c
            for (i, w, _), comments in self.comments.items()
            if (i, w) == (instance, workspace)
            for c in comments
            if c.state in ("pending", "posted")
        ]
        return sorted(rows, key=lambda c: c.created_at)

    async def set_comment_link(
        self, link: CommentLink, *, state: str, journal_sys_id: str | None = None
    ) -> CommentLink:
        R.check_state(state)
        new_id = journal_sys_id or link.journal_sys_id
        rows = self.comments.get(_key(link), [])
        for i, c in enumerate(rows):
            if c.sentinel_comment == link.sentinel_comment:
                if new_id != c.journal_sys_id:
                    if (c.instance, new_id) in self._journals:
                        raise R.duplicate(f"comment_links.journal_sys_id {new_id}")
                    self._journals.discard((c.instance, c.journal_sys_id))
                    self._journals.add((c.instance, new_id))
                rows[i] = replace(c, state=state, journal_sys_id=new_id)
        return replace(link, state=state, journal_sys_id=new_id)

    async def delete_comment_link(self, link: CommentLink) -> None:
        self._drop_comments(_key(link), lambda c: c.sentinel_comment != link.sentinel_comment)

    # --- enrichment and marks --------------------------------------------------------------------

    async def due_enrichment(self, instance: str, workspace: str, now: datetime) -> list[Link]:
        due = [
            x
            for x in self._workspace_links(instance, workspace)
            if x.enrich_after is not None and x.enrich_after <= now
        ]
        return sorted(due, key=lambda x: (x.enrich_after, x.incident))

    async def get_mark(self, instance: str, workspace: str, name: str) -> tuple[str, datetime] | None:
        return self.marks.get((instance, workspace, name))

    async def set_mark(
        self, instance: str, workspace: str, name: str, value: str | None, *, now: datetime
    ) -> None:
        if value is None:
            self.marks.pop((instance, workspace, name), None)
        else:
            self.marks[(instance, workspace, name)] = (value, _utc(now))

    # --- watermarks ------------------------------------------------------------------------------

    async def get_watermark(self, instance: str, workspace: str, side: str) -> Watermark:
        R.check_side(side)
        found = self.watermarks.get((instance, workspace, side))
        return found or Watermark(instance, workspace, side, None, None, None)

    async def set_watermark(
        self,
        instance: str,
        workspace: str,
        side: str,
        *,
        created: datetime | Unset | None = UNSET,
        modified: datetime | Unset | None = UNSET,
        moved_at: datetime,
    ) -> None:
        R.check_side(side)
        for value in (created, modified, moved_at):
            R.check_aware(None if isinstance(value, Unset) else value)
        wm = await self.get_watermark(instance, workspace, side)
        moved = _utc(moved_at)
        wm = replace(wm, moved_at=moved)
        if not isinstance(created, Unset):
            wm = replace(wm, created=_utc_opt(created), created_moved_at=moved)
        if not isinstance(modified, Unset):
            wm = replace(wm, modified=_utc_opt(modified), modified_moved_at=moved)
        self.watermarks[(instance, workspace, side)] = wm

    # --- failures --------------------------------------------------------------------------------

    async def record_failure(
        self,
        instance: str,
        workspace: str,
        incident: str,
        error: str,
        *,
        now: datetime,
        base_delay: float = 60.0,
        max_delay: float = 6 * 3600,
        grace: int = 0,
    ) -> datetime:
        key = (instance, workspace, incident)
        old = self.failure_rows.get(key)
        attempts = (old.attempts if old else 0) + 1
        delay = R.failure_delay(attempts, grace=grace, base_delay=base_delay, max_delay=max_delay)
        now = _utc(now)
        next_try = now + timedelta(seconds=delay)
        error = error[: R.ERROR_TEXT_MAX]
        self.failure_rows[key] = Failure(instance, workspace, incident, error, attempts, next_try, now)
        return next_try

    async def clear_failure(self, instance: str, workspace: str, incident: str) -> None:
        self.failure_rows.pop((instance, workspace, incident), None)

    async def failures(self, instance: str | None = None, workspace: str | None = None) -> list[Failure]:
        rows = [
            f
            for f in self.failure_rows.values()
            if instance in (None, f.instance) and workspace in (None, f.workspace)
        ]
        return sorted(rows, key=lambda f: (f.next_try, f.incident))

    async def due_failures(self, instance: str, workspace: str, now: datetime) -> list[Failure]:
        return [f for f in await self.failures(instance, workspace) if f.next_try <= now]

    async def blocked(self, instance: str, workspace: str, now: datetime) -> set[str]:
        return {f.incident for f in await self.failures(instance, workspace) if f.next_try > now}

    # --- history ---------------------------------------------------------------------------------

    async def conflicts(self, *, limit: int = 100) -> list[dict[str, Any]]:
        return [dict(c) for c in reversed(self.conflict_log[-limit:])] if limit > 0 else []

    async def record_cycle(
        self,
        instance: str,
        workspace: str,
        *,
        started: datetime,
        finished: datetime,
        ok: bool,
        summary: Mapping[str, Any],
    ) -> None:
        body = orjson.dumps(summary, default=_json_default)
        cycle = _Cycle(next(self._ids), instance, workspace, _utc(started), _utc(finished), ok, body)
        self.cycles.append(cycle)
        mine = [c for c in self.cycles if (c.instance, c.workspace) == (instance, workspace)]
        keep = {c.id for c in mine[-R.CYCLES_KEPT :]}
        keep.add(max((c.id for c in mine if c.ok), default=-1))
        self.cycles = [
            c for c in self.cycles if (c.instance, c.workspace) != (instance, workspace) or c.id in keep
        ]

    async def last_cycle(self, instance: str, workspace: str) -> dict[str, Any] | None:
        mine = [c for c in self.cycles if (c.instance, c.workspace) == (instance, workspace)]
        if not mine:
            return None
        c = mine[-1]
        return {"started": c.started, "finished": c.finished, "ok": c.ok, "summary": orjson.loads(c.summary)}

    async def last_ok_cycle(self, instance: str, workspace: str) -> datetime | None:
        mine = (c for c in self.cycles if (c.instance, c.workspace) == (instance, workspace))
        done = [c.finished for c in mine if c.ok]
        return done[-1] if done else None

    # --- helpers ---------------------------------------------------------------------------------

    def _workspace_links(self, instance: str, workspace: str) -> Iterable[Link]:
        return (x for x in self.links.values() if (x.instance, x.workspace) == (instance, workspace))

    def _checked_links(self, links: Sequence[Link]) -> list[Link]:
        """The links as they will be stored, upserted in order as a database would, after every
        check: a sys_id still linked to another incident at its turn is a duplicate."""
        out: list[Link] = []
        pending: dict[_Key, Link] = {}
        holders: dict[tuple[str, str], _Key | None] = {}
        for link in links:
            R.check_link(link)
            key = _key(link)
            old = pending.get(key) or self.links.get(key)
            created = link.created_at if link.created_at is not None else (old.created_at if old else None)
            stored = _norm_link(replace(link, created_at=created))
            ticket = (link.instance, link.sys_id)
            holder = holders[ticket] if ticket in holders else self._by_sys_id.get(ticket)
            if holder is not None and holder != key:
                raise R.duplicate(f"links.sys_id {link.sys_id}: linked to {holder[2]}")
            if old is not None and old.sys_id != link.sys_id:
                holders[(old.instance, old.sys_id)] = None
            holders[ticket] = key
            pending[key] = stored
            out.append(stored)
        return out

    def _put_link(self, link: Link) -> None:
        old = self.links.get(_key(link))
        if old is not None:
            self._by_sys_id.pop((old.instance, old.sys_id), None)
        self.links[_key(link)] = link
        self._by_sys_id[(link.instance, link.sys_id)] = _key(link)

    def _check_new_comments(self, comments: Sequence[CommentLink]) -> None:
        journals: set[tuple[str, str]] = set()
        names: set[tuple[str, str, str, str]] = set()
        for c in comments:
            R.check_comment(c)
            journal = (c.instance, c.journal_sys_id)
            name = (*_key(c), c.sentinel_comment)
            known = {x.sentinel_comment for x in self.comments.get(_key(c), [])}
            if journal in self._journals or journal in journals:
                raise R.duplicate(f"comment_links.journal_sys_id {c.journal_sys_id}")
            if name in names or c.sentinel_comment in known:
                raise R.duplicate(f"comment_links.sentinel_comment {c.sentinel_comment}")
            journals.add(journal)
            names.add(name)

    def _add_comment(self, c: CommentLink) -> None:
        self.comments.setdefault(_key(c), []).append(_norm_comment(c))
        self._journals.add((c.instance, c.journal_sys_id))

    def _drop_comments(self, key: _Key, keep: Callable[[CommentLink], bool]) -> None:
        rows = self.comments.get(key, [])
        for c in rows:
            if not keep(c):
                self._journals.discard((c.instance, c.journal_sys_id))
        rows[:] = [c for c in rows if keep(c)]


def _key(x: Link | CommentLink) -> _Key:
    return (x.instance, x.workspace, x.incident)


def _utc(value: datetime) -> datetime:
    R.check_aware(value)
    return value.astimezone(UTC)


def _utc_opt(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


def _norm_link(link: Link) -> Link:
    """What a database would give back: UTC times, plain immutable collections."""
    return replace(
        link,
        fields={k: (str(s), str(n)) for k, (s, n) in link.fields.items()},
        alerts_posted=frozenset(link.alerts_posted),
        entities_posted=frozenset(link.entities_posted),
        created_at=_utc_opt(link.created_at),
        enrich_after=_utc_opt(link.enrich_after),
        extra={str(k): str(v) for k, v in link.extra.items()},
    )


def _norm_comment(c: CommentLink) -> CommentLink:
    return replace(c, created_at=_utc(c.created_at), note_ids=tuple(c.note_ids))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)
