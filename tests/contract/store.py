"""The state store contract: every implementation subclasses :class:`StoreTests`.

As vdirsyncer's ``StorageTests``: a subclass provides the ``store`` fixture (a fresh, empty,
open store) and inherits every test, so SQLite, PostgreSQL and memory keep one behaviour.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

import agent.store.sqlite.state
from agent.core import records as R
from agent.core.records import CommentLink, Link
from agent.errors import DuplicateKey
from agent.store import Store, checks

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
ONE_INCIDENT = "a ServiceNow record is linked to one incident only"
ONE_COMMENT = "a journal entry is linked to one Sentinel comment only"
ONE_JOURNAL_ENTRY = "a Sentinel comment is linked to one journal entry only"
INST = "contoso.service-now.com"
WS = "soc-eu"


def make_link(incident: str = "inc-1", sys_id: str = "s" * 32, **changes: object) -> Link:
    link = Link(
        instance=INST,
        workspace=WS,
        incident=incident,
        sys_id=sys_id,
        number="INC0010001",
        fields={"severity": ("High", "1"), "status": ("Active", "2"), "owner": ("", "")},
        sentinel_etag='"0300bf09-0000-0000-0000-5c37296e0001"',
        snow_mod_count=3,
        open=True,
    )
    return replace(link, **changes)  # type: ignore[arg-type]


def comment(
    journal: str,
    name: str = "c-1",
    incident: str = "inc-1",
    direction: str = "to_snow",
    at: datetime = T0,
    **changes: object,
) -> CommentLink:
    return replace(CommentLink(INST, WS, incident, name, journal, direction, at), **changes)  # type: ignore[arg-type]


class StoreTests:
    """Inherited by ``Test<Kind>Store`` classes that define the ``store`` fixture."""

    # --- links -----------------------------------------------------------------------------------

    async def test_link_round_trip_every_field(self, store: Store) -> None:
        link = make_link(
            alerts_posted=frozenset({"alert-1", "alert-2"}),
            entities_posted=frozenset({"ent-1"}),
            created_at=T0,
            enrich_after=T0 + timedelta(minutes=5),
            extra={"provider_incident_id": "3177"},
            snow_mod_count=None,
            sentinel_etag=None,
        )
        await store.save_link(link)
        assert await store.get_links(INST, WS, ["inc-1", "missing"]) == {"inc-1": link}
        assert await store.get_links_by_sys_id(INST, [link.sys_id]) == {link.sys_id: link}
        assert [x async for x in store.iter_links(INST, WS)] == [link]
        assert await store.count_links(INST, WS) == (1, 1)

    async def test_link_defaults_round_trip(self, store: Store) -> None:
        link = make_link(fields={})
        await store.save_link(link)
        got = (await store.get_links(INST, WS, ["inc-1"]))["inc-1"]
        assert got == link
        assert got.extra == {} and got.alerts_posted == frozenset() and got.created_at is None

    async def test_times_come_back_in_utc_with_microseconds(self, store: Store) -> None:
        plus_two = timezone(timedelta(hours=2))
        created = datetime(2024, 5, 1, 14, 0, 0, 1, tzinfo=plus_two)
        await store.save_link(make_link(created_at=created))
        got = (await store.get_links(INST, WS, ["inc-1"]))["inc-1"].created_at
        assert got == created and got is not None and got.utcoffset() == timedelta(0)
        assert got.microsecond == 1

    async def test_save_link_upserts_and_keeps_created_at(self, store: Store) -> None:
        await store.save_link(make_link(created_at=T0))
        updated = make_link(fields={"severity": ("Low", "3")}, open=False, snow_mod_count=9, created_at=None)
        await store.save_link(updated)
        got = (await store.get_links(INST, WS, ["inc-1"]))["inc-1"]
        assert got == replace(updated, created_at=T0)
        assert await store.count_links(INST, WS) == (1, 0)

    async def test_one_servicenow_record_links_one_incident(self, store: Store) -> None:
        await store.save_link(make_link("inc-1"))
        with pytest.raises(DuplicateKey, match=ONE_INCIDENT):
            await store.save_link(make_link("inc-2"))
        with pytest.raises(DuplicateKey, match=ONE_INCIDENT):
            await store.save_links([make_link("inc-3", "t" * 32), make_link("inc-4", "t" * 32)])
        assert await store.count_links(INST, WS) == (1, 1)  # the bulk save wrote nothing

    async def test_a_link_may_move_to_another_ticket(self, store: Store) -> None:
        await store.save_link(make_link("inc-1", "a" * 32))
        await store.save_link(make_link("inc-1", "b" * 32))
        await store.save_link(make_link("inc-2", "a" * 32))  # the first ticket is free again
        assert set(await store.get_links_by_sys_id(INST, ["a" * 32, "b" * 32])) == {"a" * 32, "b" * 32}

    async def test_instances_and_workspaces_are_separate(self, store: Store) -> None:
        a = make_link()
        b = replace(make_link(number="INC0999999"), instance="fabrikam.service-now.com")
        c = replace(make_link(sys_id="c" * 32), workspace="soc-us")
        for link in (a, b, c):
            await store.save_link(link)
        assert await store.get_links(INST, WS, ["inc-1"]) == {"inc-1": a}
        assert await store.get_links("fabrikam.service-now.com", WS, ["inc-1"]) == {"inc-1": b}
        assert await store.get_links_by_sys_id("fabrikam.service-now.com", [a.sys_id]) == {a.sys_id: b}
        assert await store.get_links_by_sys_id(INST, [c.sys_id]) == {c.sys_id: c}  # any workspace
        await store.delete_link(INST, WS, "inc-1")
        assert await store.get_links(INST, WS, ["inc-1"]) == {}
        assert await store.count_links("fabrikam.service-now.com", WS) == (1, 1)
        assert await store.count_links(INST, "soc-us") == (1, 1)

    async def test_many_names_in_one_read(self, store: Store) -> None:
        links = [make_link(f"inc-{i:05d}", f"{i:032x}", number=f"INC{i:07d}") for i in range(1_234)]
        await store.save_links(links)
        names = [x.incident for x in links]
        assert len(await store.get_links(INST, WS, [*names, *names, "missing"])) == 1_234
        assert len(await store.get_links_by_sys_id(INST, (x.sys_id for x in links))) == 1_234
        got = await store.links_by_number(INST, WS, [x.number for x in links[:700]])
        assert len(got) == 700 and got["INC0000699"] == links[699]
        assert await store.get_links(INST, WS, []) == {}

    async def test_iter_links_pages_in_order_and_tolerates_writes(self, store: Store) -> None:
        await store.save_links(
            [make_link(f"inc-{i:04d}", f"{i:032x}", open=i % 4 != 0) for i in range(1_100)]
        )
        seen = []
        async for link in store.iter_links(INST, WS):
            seen.append(link.incident)
            if link.open:
                await store.save_link(replace(link, open=False))
        assert seen == sorted(seen) and len(seen) == 1_100
        assert await store.count_links(INST, WS) == (1_100, 0)
        assert [x async for x in store.iter_links(INST, WS, open_only=True)] == []

    async def test_iter_links_open_only(self, store: Store) -> None:
        await store.save_links(
            [make_link("a", "1" * 32), make_link("b", "2" * 32, open=False), make_link("c", "3" * 32)]
        )
        assert [x.incident async for x in store.iter_links(INST, WS, open_only=True)] == ["a", "c"]
        assert [x.incident async for x in store.iter_links(INST, WS)] == ["a", "b", "c"]
        assert await store.count_links(INST, WS) == (3, 2)

    async def test_links_by_number(self, store: Store) -> None:
        await store.save_link(make_link("inc-1", "1" * 32, number="INC1"))
        await store.save_link(make_link("inc-2", "2" * 32, number="INC2"))
        got = await store.links_by_number(INST, WS, ["INC2", "INC9"])
        assert list(got) == ["INC2"] and got["INC2"].incident == "inc-2"
        assert await store.links_by_number(INST, "soc-us", ["INC1"]) == {}

    async def test_naive_datetimes_are_rejected(self, store: Store) -> None:
        with pytest.raises(ValueError, match="naive"):
            await store.save_link(make_link(created_at=datetime(2024, 1, 1)))
        with pytest.raises(ValueError, match="naive"):
            await store.add_comment_link(comment("j1", at=datetime(2024, 1, 1)))
        assert await store.count_links(INST, WS) == (0, 0)

    # --- save_link as one transaction ------------------------------------------------------------

    async def test_save_link_is_atomic(self, store: Store) -> None:
        original = make_link()
        await store.save_link(original, comment_links=[comment("j1", "c-1")])
        await store.record_failure(INST, WS, "inc-1", "boom", now=T0)
        changed = make_link(fields={"severity": ("Low", "3")}, snow_mod_count=4)
        with pytest.raises(DuplicateKey, match=ONE_COMMENT):
            await store.save_link(
                changed,
                comment_links=[comment("j2", "c-2"), comment("j1", "c-3")],  # j1 is already linked
                conflicts=[("severity", "Low", "2", "sentinel")],
            )
        assert (await store.get_links(INST, WS, ["inc-1"]))["inc-1"] == original
        assert [c.journal_sys_id for c in await store.comment_links(INST, WS, "inc-1")] == ["j1"]
        assert await store.conflicts() == []
        assert [f.incident for f in await store.failures()] == ["inc-1"]
        # Usable afterwards: the failed transaction was rolled back.
        await store.save_link(changed, comment_links=[comment("j2", "c-2")])
        assert (await store.get_links(INST, WS, ["inc-1"]))["inc-1"] == changed
        assert await store.failures() == []

    async def test_save_link_rejects_comment_links_of_another_incident(self, store: Store) -> None:
        with pytest.raises(ValueError, match="another incident"):
            await store.save_link(make_link(), comment_links=[comment("j1", incident="inc-2")])
        assert await store.count_links(INST, WS) == (0, 0)

    async def test_concurrent_writers_never_interleave(self, store: Store) -> None:
        async def one(i: int) -> None:
            await store.record_failure(INST, WS, f"inc-{i}", "boom", now=T0)
            await store.save_link(
                make_link(f"inc-{i}", f"{i:032x}"), comment_links=[comment(f"j{i}", incident=f"inc-{i}")]
            )
            await store.record_failure(INST, WS, f"inc-{i}", "again", now=T0)

        await asyncio.gather(*(one(i) for i in range(40)))
        assert await store.count_links(INST, WS) == (40, 40)
        failures = await store.failures()
        assert len(failures) == 40 and {f.attempts for f in failures} == {1}  # save_link cleared the first
        for i in range(40):
            assert [c.journal_sys_id for c in await store.comment_links(INST, WS, f"inc-{i}")] == [f"j{i}"]

    async def test_delete_link_removes_comment_links_and_failure(self, store: Store) -> None:
        await store.save_link(make_link(), comment_links=[comment("j1")])
        await store.save_link(make_link("inc-2", "t" * 32), comment_links=[comment("j2", incident="inc-2")])
        await store.record_failure(INST, WS, "inc-1", "boom", now=T0)
        await store.delete_link(INST, WS, "inc-1")
        assert await store.get_links(INST, WS, ["inc-1", "inc-2"]) == {"inc-2": make_link("inc-2", "t" * 32)}
        assert await store.comment_links(INST, WS, "inc-1") == []
        assert len(await store.comment_links(INST, WS, "inc-2")) == 1
        assert await store.failures() == []
        await store.add_comment_link(comment("j1", "c-9", incident="inc-2"))  # j1 is free again

    async def test_move_link_keeps_the_ticket_and_conversation_under_a_new_key(self, store: Store) -> None:
        # A workspace's Defender XDR incident moving to the Graph source (GRAPH.md H.1).
        await store.save_link(make_link(), comment_links=[comment("j1", "c-1"), comment("j2", "c-2")])
        await store.record_failure(INST, WS, "inc-1", "boom", now=T0)
        moved = make_link(workspace="xdr", incident="tenant:42", extra={"defender_id": "42"})
        kept = [comment("j1", "g-1", incident="tenant:42", workspace="xdr"),
                comment("j2", "c-2", incident="tenant:42", workspace="xdr")]  # fmt: skip
        await store.move_link(INST, WS, "inc-1", moved, kept)
        assert await store.get_links(INST, WS, ["inc-1"]) == {}
        assert await store.get_links(INST, "xdr", ["tenant:42"]) == {"tenant:42": moved}
        assert await store.get_links_by_sys_id(INST, [moved.sys_id]) == {moved.sys_id: moved}
        assert await store.comment_links(INST, WS, "inc-1") == []
        assert await store.comment_links(INST, "xdr", "tenant:42") == kept
        assert await store.failures() == []

    async def test_move_link_is_atomic(self, store: Store) -> None:
        original = make_link()
        await store.save_link(original, comment_links=[comment("j1", "c-1")])
        await store.save_link(make_link("inc-2", "t" * 32), comment_links=[comment("j9", incident="inc-2")])
        moved = make_link(workspace="xdr", incident="tenant:42")
        taken = comment("j9", "g-1", incident="tenant:42", workspace="xdr")  # linked to inc-2 already
        with pytest.raises(DuplicateKey, match=ONE_COMMENT):
            await store.move_link(INST, WS, "inc-1", moved, [taken])
        assert await store.get_links(INST, WS, ["inc-1"]) == {"inc-1": original}
        assert [c.journal_sys_id for c in await store.comment_links(INST, WS, "inc-1")] == ["j1"]
        assert await store.get_links(INST, "xdr", ["tenant:42"]) == {}
        with pytest.raises(ValueError, match="another incident"):
            await store.move_link(INST, WS, "inc-1", moved, [comment("j5")])

    # --- comment links ---------------------------------------------------------------------------

    async def test_comment_links_round_trip_in_order(self, store: Store) -> None:
        first = comment("j1", "c-1", text_hash="h1", note_ids=("alert-1", "ent-2"), state="posted")
        second = comment("j2", "c-2", direction="to_sentinel")
        earlier = comment("j0", "c-0", at=T0 - timedelta(seconds=1))
        await store.save_link(make_link(), comment_links=[first])
        await store.add_comment_link(second)
        await store.add_comment_link(earlier)
        assert await store.comment_links(INST, WS, "inc-1") == [earlier, first, second]
        assert await store.comment_links(INST, WS, "other") == []

    async def test_add_comment_link_refuses_duplicates(self, store: Store) -> None:
        await store.add_comment_link(comment("j1", "c-1"))
        with pytest.raises(DuplicateKey, match=ONE_COMMENT):
            await store.add_comment_link(comment("j1", "c-other"))
        with pytest.raises(DuplicateKey, match=ONE_JOURNAL_ENTRY):
            await store.add_comment_link(comment("j-other", "c-1"))
        # A journal entry is unique per instance, across workspaces and incidents.
        with pytest.raises(DuplicateKey, match=ONE_COMMENT):
            await store.add_comment_link(replace(comment("j1", "c-5", incident="inc-5"), workspace="soc-us"))
        await store.add_comment_link(replace(comment("j1", "c-1"), instance="fabrikam.service-now.com"))
        assert len(await store.comment_links(INST, WS, "inc-1")) == 1

    async def test_comment_link_direction_and_state_are_checked(self, store: Store) -> None:
        with pytest.raises(ValueError, match="direction"):
            await store.add_comment_link(comment("j1", direction="sideways"))
        with pytest.raises(ValueError, match="state"):
            await store.add_comment_link(comment("j1", state="lost"))
        link = comment("j1")
        await store.add_comment_link(link)
        with pytest.raises(ValueError, match="state"):
            await store.set_comment_link(link, state="lost")

    async def test_comment_link_lifecycle(self, store: Store) -> None:
        pending = comment("pending:c-1", "c-1", state="pending", text_hash="h")
        other = comment("j-taken", "c-2")
        await store.add_comment_link(pending)
        await store.add_comment_link(other)
        assert await store.unconfirmed_comment_links(INST, WS) == [pending]
        posted = await store.set_comment_link(pending, state="posted")
        assert posted == replace(pending, state="posted")
        assert await store.unconfirmed_comment_links(INST, WS) == [posted]
        with pytest.raises(DuplicateKey, match=ONE_COMMENT):
            await store.set_comment_link(posted, state="confirmed", journal_sys_id="j-taken")
        confirmed = await store.set_comment_link(posted, state="confirmed", journal_sys_id="j-real")
        assert confirmed.journal_sys_id == "j-real"
        assert await store.unconfirmed_comment_links(INST, WS) == []
        assert await store.comment_links(INST, WS, "inc-1") == [confirmed, other]
        await store.add_comment_link(comment("pending:c-1", "c-3"))  # the placeholder is free again
        await store.delete_comment_link(confirmed)
        assert [c.sentinel_comment for c in await store.comment_links(INST, WS, "inc-1")] == ["c-2", "c-3"]

    # --- tombstones ------------------------------------------------------------------------------

    async def test_unlink_writes_a_tombstone_and_removes_the_link(self, store: Store) -> None:
        link = make_link()
        await store.save_link(link, comment_links=[comment("j1")])
        await store.record_failure(INST, WS, "inc-1", "boom", now=T0)
        assert await store.unlink(INST, WS, "inc-1", reason="duplicate", now=T0) == link
        assert await store.unlink(INST, WS, "inc-never", reason="noise", now=T0 + timedelta(1)) is None
        assert await store.count_links(INST, WS) == (0, 0)
        assert await store.comment_links(INST, WS, "inc-1") == [] and await store.failures() == []
        stones = await store.unlinked(INST, WS)
        assert list(stones) == ["inc-1", "inc-never"]
        assert stones["inc-1"] == R.Tombstone("inc-1", link.sys_id, link.number, "duplicate", T0)
        assert stones["inc-never"].sys_id == "" and stones["inc-never"].number == ""
        assert list(await store.unlinked(INST, WS, ["inc-never", "inc-x"])) == ["inc-never"]
        assert await store.unlinked(INST, "soc-us") == {}
        assert await store.forget_unlinked(INST, WS, "inc-1") is True
        assert await store.forget_unlinked(INST, WS, "inc-1") is False
        assert list(await store.unlinked(INST, WS)) == ["inc-never"]

    # --- enrichment and marks --------------------------------------------------------------------

    async def test_due_enrichment(self, store: Store) -> None:
        later = T0 + timedelta(minutes=10)
        await store.save_link(make_link("a", "1" * 32, enrich_after=later))
        await store.save_link(make_link("b", "2" * 32, enrich_after=T0, open=False))
        await store.save_link(make_link("c", "3" * 32))
        assert [x.incident for x in await store.due_enrichment(INST, WS, T0)] == ["b"]
        assert [x.incident for x in await store.due_enrichment(INST, WS, later)] == ["b", "a"]
        assert await store.due_enrichment(INST, "soc-us", later) == []

    async def test_marks(self, store: Store) -> None:
        assert await store.get_mark(INST, WS, "sweep") is None
        await store.set_mark(INST, WS, "sweep", "done", now=T0)
        await store.set_mark(INST, WS, "sweep", "again", now=T0 + timedelta(1))
        assert await store.get_mark(INST, WS, "sweep") == ("again", T0 + timedelta(1))
        assert await store.get_mark(INST, "soc-us", "sweep") is None
        await store.set_mark(INST, WS, "sweep", None, now=T0)
        assert await store.get_mark(INST, WS, "sweep") is None

    # --- watermarks ------------------------------------------------------------------------------

    async def test_watermarks_update_only_what_is_given(self, store: Store) -> None:
        empty = await store.get_watermark(INST, WS, "sentinel")
        assert empty == R.Watermark(INST, WS, "sentinel", None, None, None)
        t1, t2, t3 = (T0 + timedelta(minutes=i) for i in (1, 2, 3))
        await store.set_watermark(INST, WS, "sentinel", created=T0, moved_at=t1)
        assert await store.get_watermark(INST, WS, "sentinel") == R.Watermark(
            INST, WS, "sentinel", T0, None, t1, t1, None
        )
        await store.set_watermark(INST, WS, "sentinel", modified=t1, moved_at=t2)
        assert await store.get_watermark(INST, WS, "sentinel") == R.Watermark(
            INST, WS, "sentinel", T0, t1, t2, t1, t2
        )
        await store.set_watermark(INST, WS, "sentinel", created=None, moved_at=t3)
        wm = await store.get_watermark(INST, WS, "sentinel")
        assert (wm.created, wm.modified, wm.moved_at, wm.created_moved_at) == (None, t1, t3, t3)
        other = await store.get_watermark(INST, WS, "servicenow")
        assert (other.created, other.modified, other.moved_at) == (None, None, None)

    async def test_watermark_side_is_checked(self, store: Store) -> None:
        with pytest.raises(ValueError, match="side"):
            await store.set_watermark(INST, WS, "jira", moved_at=T0)
        with pytest.raises(ValueError, match="side"):
            await store.get_watermark(INST, WS, "jira")

    # --- failures --------------------------------------------------------------------------------

    async def test_failure_backoff_grows_and_caps(self, store: Store) -> None:
        delays = []
        for _ in range(6):
            next_try = await store.record_failure(INST, WS, "inc-1", "HTTP 503", now=T0, max_delay=1000)
            delays.append((next_try - T0).total_seconds())
        assert delays == [60, 120, 240, 480, 960, 1000]
        [failure] = await store.failures()
        assert (failure.incident, failure.error, failure.attempts) == ("inc-1", "HTTP 503", 6)
        assert failure.next_try == T0 + timedelta(seconds=1000)
        assert failure.last_at == T0

    async def test_failure_grace_retries_at_once_then_backs_off(self, store: Store) -> None:
        delays = []
        for _ in range(4):
            next_try = await store.record_failure(INST, WS, "inc-1", "HTTP 502", now=T0, grace=2)
            delays.append((next_try - T0).total_seconds())
        assert delays == [0, 0, 60, 120]
        assert (await store.failures())[0].attempts == 4

    async def test_failure_backoff_survives_many_attempts(self, store: Store) -> None:
        for _ in range(70):
            next_try = await store.record_failure(INST, WS, "inc-1", "again", now=T0)
        assert next_try == T0 + timedelta(hours=6)

    async def test_blocked_and_due_failures(self, store: Store) -> None:
        next_try = await store.record_failure(INST, WS, "inc-1", "boom", now=T0)
        await store.record_failure(INST, "other-ws", "inc-9", "boom", now=T0)
        assert await store.blocked(INST, WS, T0) == {"inc-1"}
        assert await store.due_failures(INST, WS, T0) == []
        assert await store.blocked(INST, WS, next_try) == set()
        assert [f.incident for f in await store.due_failures(INST, WS, next_try)] == ["inc-1"]
        assert [f.incident for f in await store.failures(workspace="other-ws")] == ["inc-9"]
        assert [f.incident for f in await store.failures(INST, WS)] == ["inc-1"]
        assert len(await store.failures()) == 2
        await store.clear_failure(INST, WS, "inc-1")
        assert await store.failures(INST, WS) == []

    async def test_successful_save_clears_failure(self, store: Store) -> None:
        await store.record_failure(INST, WS, "inc-1", "boom", now=T0)
        await store.save_link(make_link())
        assert await store.blocked(INST, WS, T0) == set()
        next_try = await store.record_failure(INST, WS, "inc-1", "boom again", now=T0)
        assert next_try == T0 + timedelta(seconds=60)  # the count started over

    async def test_long_error_text_is_truncated(self, store: Store) -> None:
        await store.record_failure(INST, WS, "inc-1", "e" * 10_000, now=T0)
        [failure] = await store.failures()
        assert failure.error == "e" * checks.ERROR_TEXT_MAX

    # --- history ---------------------------------------------------------------------------------

    async def test_conflicts_are_logged_newest_first(self, store: Store) -> None:
        await store.save_link(make_link(), conflicts=[("severity", "Low", "2", "servicenow")], now=T0)
        later = T0 + timedelta(minutes=1)
        await store.save_link(make_link(), conflicts=[("owner", "a@x", "b" * 32, "sentinel")], now=later)
        got = await store.conflicts()
        assert [(c["field"], c["winner"], c["at"]) for c in got] == [
            ("owner", "sentinel", later),
            ("severity", "servicenow", T0),
        ]
        assert got[1] == {
            "at": T0,
            "instance": INST,
            "workspace": WS,
            "incident": "inc-1",
            "field": "severity",
            "sentinel": "Low",
            "servicenow": "2",
            "winner": "servicenow",
        }
        assert len(await store.conflicts(limit=1)) == 1

    async def test_cycles_round_trip(self, store: Store) -> None:
        assert await store.last_cycle(INST, WS) is None
        assert await store.last_ok_cycle(INST, WS) is None
        end = T0 + timedelta(seconds=3)
        summary = {"updated": 2, "at": T0, "ids": {"b", "a"}}
        await store.record_cycle(INST, WS, started=T0, finished=end, ok=True, summary=summary)
        failed_end = end + timedelta(minutes=1)
        await store.record_cycle(INST, WS, started=end, finished=failed_end, ok=False, summary={"error": "x"})
        assert await store.last_cycle(INST, WS) == {
            "started": end,
            "finished": failed_end,
            "ok": False,
            "summary": {"error": "x"},
        }
        assert await store.last_ok_cycle(INST, WS) == end
        assert await store.last_cycle(INST, "other-ws") is None
        await store.record_cycle(INST, "other-ws", started=T0, finished=T0, ok=True, summary=summary)
        got = await store.last_cycle(INST, "other-ws")
        assert got is not None and got["summary"] == {"updated": 2, "at": T0.isoformat(), "ids": ["a", "b"]}

    async def test_cycle_history_is_pruned_but_keeps_last_success(
        self, store: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for module in (checks, agent.store.sqlite.state):
            monkeypatch.setattr(module, "CYCLES_KEPT", 3)
        last_ok = T0 + timedelta(minutes=1)
        for t in (T0, last_ok):
            await store.record_cycle(INST, WS, started=t, finished=t, ok=True, summary={})
        for i in range(2, 7):
            t = T0 + timedelta(minutes=i)
            await store.record_cycle(INST, WS, started=t, finished=t, ok=False, summary={"i": i})
        assert await store.last_ok_cycle(INST, WS) == last_ok
        assert (await store.last_cycle(INST, WS) or {})["summary"] == {"i": 6}
        assert await self.cycles_kept(store) == 4

    async def cycles_kept(self, store: Store) -> int:
        """How many cycle rows the store holds (each implementation counts its own way)."""
        raise NotImplementedError

    # --- lifecycle -------------------------------------------------------------------------------

    async def test_schema_version_and_location(self, store: Store) -> None:
        assert await store.schema_version() >= 1
        assert isinstance(store.location, str) and store.location
        assert isinstance(store, Store)
