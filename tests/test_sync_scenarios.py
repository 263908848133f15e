"""The engine on the memory store and in-memory sides (agent.testing.fakes): golden scenarios in
the manner of rclone bisync's, each an initial state, steps and the expected state of both sides
and the shadow. No HTTP, no emulator: what is tested is the engine's decisions and their order
(the connectors have their own tests against the emulators)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from agent.core.records import Link
from agent.errors import AgentError, SafetyValveTripped
from agent.store.memory import MemoryStore
from agent.sync import clock as sync_clock
from agent.sync.cycle import CycleOptions, CycleStats, WorkspaceSync, run_workspaces
from agent.testing import fakes
from agent.testing.fakes import CLOSED, RESOLVED, Clock, FakeSink, FakeSource


class Died(BaseException):
    """The process died (like a SIGKILL): nothing after it runs."""


@dataclass
class Rig:
    clock: Clock
    source: FakeSource
    sink: FakeSink
    store: MemoryStore
    sync: WorkspaceSync

    async def cycle(self, **options: Any) -> CycleStats:
        result = (await run_workspaces([self.sync], CycleOptions(**options)))["ws"]
        if isinstance(result, BaseException):
            raise result
        return result

    async def link(self, incident: str) -> Link | None:
        return (await self.store.get_links("inst", "ws", [incident])).get(incident)

    async def lose_shadow(self) -> None:
        """The state database is gone: the engine goes on with an empty store."""
        self.store = await MemoryStore.open()
        self.sync = WorkspaceSync(fakes.settings(), self.source, self.sink, self.store)

    def writes(self) -> tuple[int, int, int]:
        return (self.source.writes, self.sink.writes, len(self.sink.tickets))


@pytest.fixture
async def rig(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    clock = Clock()
    monkeypatch.setattr(sync_clock, "utcnow", lambda: clock.now)
    source, sink = FakeSource(clock), FakeSink(clock, users={"alice@example.com": "u-alice"})
    store = await MemoryStore.open()
    yield Rig(clock, source, sink, store, WorkspaceSync(fakes.settings(), source, sink, store))
    await store.close()


async def test_a_pair_waiting_for_its_commit_leaves_its_slot_to_the_next(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the shadow's commit is left: the pair's concurrency slot goes to the next incident,
    and the remote requests in flight stay within max_concurrency."""
    rig.sync = WorkspaceSync(fakes.settings(max_concurrency=2), rig.source, rig.sink, rig.store)
    for _ in range(3):
        rig.source.add(severity="High")
    committing: list[str] = []
    gate, third = asyncio.Event(), asyncio.Event()
    save_link = rig.store.save_link

    async def slow_commit(link: Link, **kwargs: Any) -> None:
        committing.append(link.incident)
        if len(committing) == 3:
            third.set()
        if len(committing) <= 2:
            await gate.wait()  # the first two commits wait until the third pair got going
        await save_link(link, **kwargs)

    in_flight = most = 0

    def counted(call: Any) -> Any:
        async def remote(*args: Any, **kwargs: Any) -> Any:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            try:
                await asyncio.sleep(0.001)
                return await call(*args, **kwargs)
            finally:
                in_flight -= 1

        return remote

    monkeypatch.setattr(rig.store, "save_link", slow_commit)
    monkeypatch.setattr(rig.sink, "create", counted(rig.sink.create))
    monkeypatch.setattr(rig.source, "add_label", counted(rig.source.add_label))
    monkeypatch.setattr(rig.source, "entities", counted(rig.source.entities))
    cycle = asyncio.create_task(rig.cycle())
    async with asyncio.timeout(5):
        await third.wait()  # without the hand-over the third pair never starts
    gate.set()
    stats = await cycle
    assert (stats.created, stats.failures, len(rig.sink.tickets)) == (3, 0, 3)
    assert most == 2


def ticket_of(rig: Rig, incident: str) -> Any:
    [ticket] = rig.sink.by_key(incident)
    return ticket


async def test_a_new_incident_gets_one_ticket_and_the_next_cycle_is_idle(rig: Rig) -> None:
    inc = rig.source.add(severity="High", owner="alice@example.com")
    stats = await rig.cycle()
    ticket = ticket_of(rig, inc.id)
    assert (stats.created, ticket.values) == (1, {"severity": "1", "status": "1", "owner": "u-alice"})
    assert ticket.number in rig.source.incidents[inc.id].labels  # the number written back as a label
    link = await rig.link(inc.id)
    assert link is not None and link.fields == {
        "severity": ("High", "1"),
        "status": ("New", "1"),
        "owner": ("alice@example.com", "u-alice"),
    }
    before = rig.writes()
    stats = await rig.cycle()
    assert rig.writes() == before and (stats.created, stats.updated_snow, stats.updated_sentinel) == (0, 0, 0)


async def test_each_side_is_compared_with_its_own_last_agreed_value(rig: Rig) -> None:
    inc = rig.source.add()
    await rig.cycle()
    ticket = ticket_of(rig, inc.id)
    rig.source.edit(inc.id, severity="High")
    stats = await rig.cycle()
    assert (stats.updated_snow, ticket_of(rig, inc.id).values["severity"]) == (1, "1")
    rig.sink.edit(ticket.id, severity="3")
    stats = await rig.cycle()
    assert (stats.updated_sentinel, rig.source.incidents[inc.id].values["severity"]) == (1, "Low")
    before = rig.writes()
    idle = await rig.cycle()  # both re-listed at the watermark: nothing to write
    assert rig.writes() == before and (idle.updated_snow, idle.updated_sentinel) == (0, 0)


async def test_a_lossy_map_never_flip_flops(rig: Rig) -> None:
    inc = rig.source.add(severity="Low")
    await rig.cycle()
    rig.source.edit(inc.id, severity="Informational")  # maps to "3" as Low does
    stats = await rig.cycle()
    assert (stats.updated_snow, stats.updated_sentinel) == (0, 0)
    link = await rig.link(inc.id)
    assert link is not None and link.fields["severity"] == ("Informational", "3")


async def test_a_crash_between_the_remote_write_and_the_commit_heals_without_a_write(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    inc = rig.source.add()
    await rig.cycle()
    rig.source.edit(inc.id, severity="High")
    real = rig.store.save_link

    async def crash(*args: Any, **kwargs: Any) -> None:
        raise Died  # the process dies after the PATCH, before the commit

    monkeypatch.setattr(rig.store, "save_link", crash)
    with pytest.raises(BaseExceptionGroup, match="unhandled errors in a TaskGroup") as died:
        await rig.cycle()
    assert died.group_contains(Died)
    monkeypatch.setattr(rig.store, "save_link", real)
    assert ticket_of(rig, inc.id).values["severity"] == "1"  # the write landed
    before = rig.writes()
    stats = await rig.cycle()  # changed on both sides, now equal: only recorded
    assert rig.writes() == before and (stats.updated_snow, stats.updated_sentinel) == (0, 0)
    link = await rig.link(inc.id)
    assert link is not None and link.fields["severity"] == ("High", "1")


async def test_a_lost_shadow_adopts_the_ticket_instead_of_making_a_second(rig: Rig) -> None:
    inc = rig.source.add()
    await rig.cycle()
    await rig.lose_shadow()
    rig.source.edit(inc.id, severity="High")
    stats = await rig.cycle()
    assert (stats.created, stats.adopted, len(rig.sink.tickets)) == (0, 1, 1)
    assert ticket_of(rig, inc.id).values["severity"] == "1"


async def test_an_unlinked_incident_is_never_created_again(rig: Rig) -> None:
    inc = rig.source.add()
    await rig.store.unlink("inst", "ws", inc.id, reason="operator", now=rig.clock.now)
    stats = await rig.cycle()
    assert (stats.created, rig.sink.tickets) == (0, {})


async def test_a_transient_failure_fails_that_incident_only_and_is_retried(rig: Rig) -> None:
    first, second = rig.source.add(title="first"), rig.source.add(title="second")
    rig.sink.failing["create"] = fakes.transient()
    stats = await rig.cycle()
    assert (stats.created, stats.failures) == (1, 1)
    failed = [f.incident for f in await rig.store.failures("inst", "ws")]
    assert len(failed) == 1 and failed[0] in (first.id, second.id)
    stats = await rig.cycle()  # a first transient failure is retried by the next cycle
    assert (stats.created, len(rig.sink.tickets)) == (1, 2)
    assert await rig.store.failures("inst", "ws") == []


async def test_a_bug_stops_the_cycle_and_is_no_incident_failure(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.source.add()

    def broken(*args: Any) -> str:
        raise KeyError("severity")

    monkeypatch.setattr(rig.source, "ticket_description", broken)
    result = (await run_workspaces([rig.sync], CycleOptions()))["ws"]
    assert isinstance(result, ExceptionGroup) and not isinstance(result, AgentError)
    assert [type(e) for e in result.exceptions] == [KeyError]
    assert await rig.store.failures("inst", "ws") == [] and rig.sink.tickets == {}


async def test_a_reopen_against_a_closed_ticket_opens_a_follow_up(rig: Rig) -> None:
    inc = rig.source.add()
    await rig.cycle()
    old = ticket_of(rig, inc.id)
    rig.source.edit(inc.id, status="Closed")
    await rig.cycle()
    assert ticket_of(rig, inc.id).values["status"] == RESOLVED
    rig.sink.edit(old.id, by="system", status=CLOSED)  # the platform closes it: read-only now
    await rig.cycle()
    rig.source.edit(inc.id, status="Active")
    stats = await rig.cycle()
    tickets = rig.sink.by_key(inc.id)
    assert (stats.created, len(tickets)) == (1, 2)
    link = await rig.link(inc.id)
    assert link is not None and link.sys_id != old.id and link.extra["previous_tickets"].endswith(old.id)
    assert rig.sink.tickets[old.id].values["status"] == CLOSED  # never written again


async def test_with_reopen_closed_note_the_incident_is_told_once(rig: Rig) -> None:
    rig.sync = WorkspaceSync(fakes.settings(reopen_closed="note"), rig.source, rig.sink, rig.store)
    inc = rig.source.add()
    await rig.cycle()
    ticket = ticket_of(rig, inc.id)
    rig.source.edit(inc.id, status="Closed")
    await rig.cycle()
    rig.sink.edit(ticket.id, by="system", status=CLOSED)
    await rig.cycle()
    rig.source.edit(inc.id, status="Active")
    await rig.cycle()
    await rig.cycle()
    notes = [c for c in rig.source.notes[inc.id] if "stays closed" in c.text]
    assert len(notes) == 1 and len(rig.sink.tickets) == 1


async def test_a_dry_run_lists_what_the_run_then_does_and_writes_nothing(rig: Rig) -> None:
    a, b = rig.source.add(), rig.source.add()
    await rig.cycle()
    rig.source.edit(a.id, severity="High")
    rig.sink.edit(ticket_of(rig, b.id).id, severity="1")
    c = rig.source.add()
    before, links = rig.writes(), [link async for link in rig.store.iter_links("inst", "ws")]
    dry = await rig.cycle(dry_run=True)
    assert rig.writes() == before and [link async for link in rig.store.iter_links("inst", "ws")] == links
    planned = sorted((p["action"], p["incident"]) for p in dry.planned)
    assert planned == sorted([("create_snow", c.id), ("update_snow", a.id), ("update_sentinel", b.id)])
    done = await rig.cycle()
    assert (done.created, done.updated_snow, done.updated_sentinel) == (
        dry.created,
        dry.updated_snow,
        dry.updated_sentinel,
    )


async def test_the_close_ratio_valve_trips_before_any_write(rig: Rig) -> None:
    incidents = [rig.source.add() for _ in range(10)]
    await rig.cycle()
    for inc in incidents[:6]:
        rig.source.edit(inc.id, status="Closed")
    before = rig.writes()
    with pytest.raises(SafetyValveTripped, match="max_close_ratio"):
        await rig.cycle()
    assert rig.writes() == before
    stats = await rig.cycle(force=True)
    assert stats.updated_snow == 6


async def test_comments_cross_once_each_way_and_never_echo(rig: Rig) -> None:
    inc = rig.source.add()
    await rig.cycle()
    ticket = ticket_of(rig, inc.id)
    rig.source.comment(inc.id, "seen on the endpoint")
    await rig.cycle()
    notes = rig.sink.journal.entries[ticket.id]
    assert [n.text.endswith("seen on the endpoint") for n in notes] == [True]
    rig.sink.note(ticket.id, "isolated the host")
    await rig.cycle()
    await rig.cycle()
    texts = [c.text for c in rig.source.notes[inc.id]]
    assert len(texts) == 2 and texts[1].endswith("isolated the host")
    assert len(rig.sink.journal.entries[ticket.id]) == 2  # the agent's own comment never came back


async def test_a_pair_whose_ticket_is_gone_is_skipped(rig: Rig) -> None:
    inc = rig.source.add()
    await rig.cycle()
    del rig.sink.tickets[ticket_of(rig, inc.id).id]
    rig.source.edit(inc.id, severity="High")
    stats = await rig.cycle()
    assert (stats.skipped, stats.updated_snow, stats.failures) == (1, 0, 0)


async def test_a_conflict_goes_to_the_newest_side(rig: Rig) -> None:
    inc = rig.source.add()
    await rig.cycle()
    ticket = ticket_of(rig, inc.id)
    rig.source.edit(inc.id, severity="High")
    rig.sink.edit(ticket.id, severity="3")  # later
    stats = await rig.cycle()
    assert stats.conflicts == 1
    assert rig.source.incidents[inc.id].values["severity"] == "Low"
    link = await rig.link(inc.id)
    assert link is not None and link.fields["severity"] == ("Low", "3")


async def test_an_analyst_change_racing_the_write_is_copied_not_overwritten(rig: Rig) -> None:
    inc = rig.source.add()
    await rig.cycle()
    rig.sink.edit(ticket_of(rig, inc.id).id, severity="1")
    real = rig.source.write
    raced = False

    async def racing(incident: Any, body: Any) -> Any:
        nonlocal raced
        if not raced:  # an analyst saves the owner just before our write lands
            raced = True
            rig.source.edit(incident.id, owner="alice@example.com")
        return await real(incident, body)

    rig.source.write = racing  # type: ignore[method-assign]
    await rig.cycle()
    assert rig.source.incidents[inc.id].values == {
        "severity": "High",
        "status": "New",
        "owner": "alice@example.com",
    }
    assert ticket_of(rig, inc.id).values["owner"] == "u-alice"


# --- a new ticket's opening entry (#18: one create carries what the incident already holds) --------


def journal_texts(rig: Rig, incident: str) -> list[str]:
    return [n.text for n in rig.sink.journal.entries.get(ticket_of(rig, incident).id, [])]


async def test_comments_made_before_the_ticket_ride_in_its_create(rig: Rig) -> None:
    inc = rig.source.add()
    rig.source.comment(inc.id, "first look")
    rig.source.comment(inc.id, "seen on the endpoint", author="bob")
    stats = await rig.cycle()
    assert (stats.created, stats.comments_to_snow, rig.sink.writes) == (1, 2, 1)  # the create only
    [entry] = journal_texts(rig, inc.id)
    first, second = entry.split("\n\n", 1)[1], entry.split("\n\n")[-1]
    assert (first.startswith("first look"), second) == (True, "seen on the endpoint")
    assert "by bob" in entry
    for _ in range(2):
        await rig.cycle()
    assert len(journal_texts(rig, inc.id)) == 1 and len(rig.source.notes[inc.id]) == 2  # no echo
    rig.source.comment(inc.id, "a later one")
    await rig.cycle()
    assert [t.endswith("a later one") for t in journal_texts(rig, inc.id)] == [False, True]


async def test_a_crash_between_the_create_and_the_commit_posts_the_opening_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    inc = rig.source.add()
    rig.source.comment(inc.id, "before the ticket")
    real = rig.store.save_link

    async def crash(*args: Any, **kwargs: Any) -> None:
        raise Died  # the create landed (with its entry); the link was never committed

    monkeypatch.setattr(rig.store, "save_link", crash)
    with pytest.raises(BaseExceptionGroup, match="unhandled errors in a TaskGroup") as died:
        await rig.cycle()
    assert died.group_contains(Died)
    monkeypatch.setattr(rig.store, "save_link", real)
    assert len(journal_texts(rig, inc.id)) == 1
    stats = await rig.cycle()
    assert (stats.created, stats.adopted, stats.comments_to_snow, len(rig.sink.tickets)) == (0, 1, 0, 1)
    for _ in range(2):
        await rig.cycle()
    [entry] = journal_texts(rig, inc.id)
    assert entry.endswith("before the ticket") and len(rig.source.notes[inc.id]) == 1
    [intent] = await rig.store.comment_links("inst", "ws", inc.id)
    assert intent.state == "confirmed" and intent.note_ids == (f"comment:{rig.source.notes[inc.id][0].id}",)


async def test_a_crash_before_the_create_loses_no_comment(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The intents were committed, the create never went out: the next create drops them and
    carries the comments itself."""
    inc = rig.source.add()
    rig.source.comment(inc.id, "before the ticket")
    real = rig.sink.create

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise Died

    monkeypatch.setattr(rig.sink, "create", crash)
    with pytest.raises(BaseExceptionGroup, match="unhandled errors in a TaskGroup"):
        await rig.cycle()
    assert [c.state for c in await rig.store.comment_links("inst", "ws", inc.id)] == ["pending"]
    monkeypatch.setattr(rig.sink, "create", real)
    stats = await rig.cycle()
    assert (stats.created, stats.comments_to_snow) == (1, 1)
    [entry] = journal_texts(rig, inc.id)
    assert entry.endswith("before the ticket")
    assert [c.state for c in await rig.store.comment_links("inst", "ws", inc.id)] == ["confirmed"]


async def test_a_lost_shadow_finds_the_comments_inside_the_opening_entry(rig: Rig) -> None:
    inc = rig.source.add()
    rig.source.comment(inc.id, "one")
    rig.source.comment(inc.id, "two")
    await rig.cycle()
    await rig.lose_shadow()
    rig.source.edit(inc.id, severity="High")
    stats = await rig.cycle()
    assert (stats.adopted, stats.comments_to_snow, stats.comments_to_sentinel) == (1, 0, 0)
    for _ in range(2):
        await rig.cycle()
    assert len(journal_texts(rig, inc.id)) == 1 and len(rig.source.notes[inc.id]) == 2


# --- a source whose comments get no id the agent chooses (Graph, GRAPH.md E) -----------------------


@pytest.fixture
async def graphlike(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    clock = Clock()
    monkeypatch.setattr(sync_clock, "utcnow", lambda: clock.now)
    source = FakeSource(clock, stable_comment_ids=False)
    sink = FakeSink(clock, users={"alice@example.com": "u-alice"})
    store = await MemoryStore.open()
    yield Rig(clock, source, sink, store, WorkspaceSync(fakes.settings(), source, sink, store))
    await store.close()


def on_incident(rig: Rig, incident: str, text: str) -> int:
    return sum(1 for c in rig.source.notes[incident] if c.text.endswith(text))


async def test_without_comment_ids_each_journal_entry_is_written_once_and_never_echoes(
    graphlike: Rig,
) -> None:
    rig = graphlike
    inc = rig.source.add()
    await rig.cycle()
    ticket = ticket_of(rig, inc.id)
    rig.sink.note(ticket.id, "isolated the host")
    await rig.cycle()
    for _ in range(3):
        await rig.cycle()
    assert on_incident(rig, inc.id, "isolated the host") == 1
    assert len(rig.sink.journal.entries[ticket.id]) == 1  # the agent's comment never came back
    rig.source.comment(inc.id, "seen on the endpoint")
    await rig.cycle()
    await rig.cycle()
    notes = [n.text for n in rig.sink.journal.entries[ticket.id]]
    assert len(notes) == 2 and notes[1].endswith("seen on the endpoint")


async def test_without_comment_ids_a_lost_answer_is_settled_by_text_not_written_again(graphlike: Rig) -> None:
    rig = graphlike
    inc = rig.source.add()
    await rig.cycle()
    ticket = ticket_of(rig, inc.id)
    rig.sink.note(ticket.id, "isolated the host")
    rig.source.lose_comment_answer = True  # the POST lands, its answer is lost
    stats = await rig.cycle()
    assert stats.comments_deferred == 1 and on_incident(rig, inc.id, "isolated the host") == 1
    rig.clock.now += timedelta(minutes=5)  # past the retry's backoff
    await rig.cycle()
    await rig.cycle()
    assert on_incident(rig, inc.id, "isolated the host") == 1
    links = await rig.store.comment_links("inst", "ws", inc.id)
    assert [c.state for c in links] == ["confirmed"]


async def test_without_comment_ids_a_write_that_never_landed_is_written_again(graphlike: Rig) -> None:
    rig = graphlike
    inc = rig.source.add()
    await rig.cycle()
    ticket = ticket_of(rig, inc.id)
    rig.sink.note(ticket.id, "isolated the host")
    rig.source.failing["comment"] = fakes.transient()
    stats = await rig.cycle()
    assert stats.comments_deferred == 1 and on_incident(rig, inc.id, "isolated the host") == 0
    rig.clock.now += timedelta(minutes=5)  # past the retry's backoff
    await rig.cycle()
    await rig.cycle()
    assert on_incident(rig, inc.id, "isolated the host") == 1


async def test_without_comment_ids_a_lost_shadow_finds_the_written_comments_again(graphlike: Rig) -> None:
    rig = graphlike
    inc = rig.source.add()
    await rig.cycle()
    ticket = ticket_of(rig, inc.id)
    rig.sink.note(ticket.id, "isolated the host")
    await rig.cycle()
    await rig.cycle()
    await rig.store.close()
    rig.store = await MemoryStore.open()  # the shadow is gone
    rig.sync = WorkspaceSync(fakes.settings(), rig.source, rig.sink, rig.store)
    for _ in range(3):
        await rig.cycle()
    assert on_incident(rig, inc.id, "isolated the host") == 1
    assert len(rig.sink.tickets) == 1 and len(rig.sink.journal.entries[ticket.id]) == 1


async def test_an_incident_handed_over_to_another_source_is_neither_created_written_nor_committed(
    rig: Rig,
) -> None:
    kept, handed, new = rig.source.add(), rig.source.add(), rig.source.add(title="new")
    rig.source.handed.add(new.id)
    await rig.cycle()
    assert rig.sink.by_key(new.id) == []  # never created by this source
    rig.source.handed.add(handed.id)
    before = await rig.link(handed.id)
    rig.source.edit(handed.id, severity="High")
    rig.source.edit(kept.id, severity="High")
    ticket = ticket_of(rig, handed.id)
    rig.sink.edit(ticket.id, severity="3")
    await rig.cycle()
    assert ticket_of(rig, kept.id).values["severity"] == "1"  # the others sync as before
    assert ticket_of(rig, handed.id).values["severity"] == "3"  # nothing written either way
    assert rig.source.incidents[handed.id].values["severity"] == "High"
    assert await rig.link(handed.id) == before  # and nothing committed
