"""Comments <-> journal entries against the emulators: both directions, exactly once, no echo,
readable text, limits, crashes between a write and its shadow commit, a missing journal ACL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from agent.connectors.sentinel.source import comment_id
from agent.connectors.servicenow.client import ServiceNowClient
from agent.core.records import CommentLink
from agent.core.text import SENTINEL_MAX, cap_html, utf16_len
from agent.errors import PermanentError
from agent.log import log
from agent.store.sqlite.store import Shadow
from agent.sync import clock
from agent.testing.emulators.sentinel import portal_text
from agent.testing.emulators.stack import DEFAULT_SNOW_USER
from tests.e2e import Env, writes
from tests.sync_invariants import entry_parts

ALICE = "alice@contoso.example"


MOVES, ETAG_ONLY = "comment moves modified", "comment changes only the etag"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "env" in metafunc.fixturenames:
        metafunc.parametrize("comment_mode", [MOVES, ETAG_ONLY], indirect=True)


@pytest.fixture(autouse=True)
def comment_mode(request: pytest.FixtureRequest) -> str:
    """Every test here against the emulators runs in both E.2 modes: whether a comment moves
    the incident's lastModifiedTimeUtc is not verified. When it does not, the open check finds
    the comment (every cycle here, so a test can expect it in the next one; the default
    interval has its own test)."""
    mode = str(getattr(request, "param", MOVES))
    if mode == ETAG_ONLY:
        env: Env = request.getfixturevalue("env")
        env.stack.sentinel.comment_moves_modified = False
        env.defaults = {"agent": {"open_check_interval": "0"}}
        env.rewrite({})
    return mode


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    log.sinks.append(records.append)
    yield records
    log.sinks.remove(records.append)


def named(records: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] == event]


async def linked(env: Env, **incident: Any) -> tuple[str, str]:
    """A labelled incident synced once: (incident name, ServiceNow sys_id)."""
    inc = env.ws().create_incident(labels=["snow"], **{"title": "t", **incident})
    await env.stats()
    return inc["name"], env.snow_record(inc["name"])["sys_id"]


def backoff_passed(env: Env) -> None:
    """Make every retry due now, instead of waiting for its backoff: failed incidents and
    deferred (or late-enrichment) conversation re-checks."""
    past = "2000-01-01T00:00:00.000000+00:00"
    with sqlite3.connect(env.tmp / "state.db") as db:
        db.execute("UPDATE failures SET next_try = ?", (past,))
        db.execute("UPDATE links SET enrich_after = ? WHERE enrich_after IS NOT NULL", (past,))


def notes(env: Env, sys_id: str, element: str = "work_notes") -> list[dict[str, str]]:
    return env.snow.journal(sys_id, element)


def messages(env: Env, name: str) -> list[str]:
    """The incident's comments as the Sentinel portal shows them (HTML rendered, REFERENCE E.3)."""
    return env.ws().portal_comments(name)


async def test_sentinel_comment_becomes_one_work_note_with_header(
    env: Env, events: list[dict[str, Any]]
) -> None:
    name, sys_id = await linked(env)
    env.ws().analyst_comment(
        name, "<p>Isolated <b>host-7</b> &amp; reset the password.</p>", author_upn=ALICE
    )
    stats = await env.stats()
    assert stats.comments_to_snow == 1
    [note] = notes(env, sys_id)
    head, _, body = note["value"].partition("\n\n")
    assert head.startswith("Microsoft Sentinel comment by Alice Analyst (alice@contoso.example), ")
    assert head.endswith(" UTC")
    assert body == "Isolated host-7 & reset the password."
    assert note["sys_created_by"] == DEFAULT_SNOW_USER
    assert len(named(events, "comment_to_snow")) == 1
    for _ in range(2):
        await env.stats()
    assert len(notes(env, sys_id)) == 1  # exactly once
    assert len(env.ws().comments(name)) == 1  # and never echoed back
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        [link] = await shadow.comment_links(env.stack.workspace_instance("soc"), "soc", name)
    assert (link.state, link.journal_sys_id, link.direction) == ("confirmed", note["sys_id"], "to_snow")


async def test_comments_present_at_creation_go_over_oldest_first(env: Env) -> None:
    """The comments made before the ticket ride in its create: one entry, oldest first, each
    below its author and time."""
    ws = env.ws()
    inc = ws.create_incident(title="t", labels=["snow"])
    for text in ("first", "second", "third"):
        ws.analyst_comment(inc["name"], text, author_upn=ALICE)
    mark = env.stack.recorder.mark()
    stats = await env.stats()
    assert stats.comments_to_snow == 3
    rec = env.snow_record(inc["name"])
    [entry] = notes(env, rec["sys_id"])
    parts = entry_parts(entry["value"])
    assert [p.partition("\n\n")[2] for p in parts] == ["first", "second", "third"]
    assert all(
        p.startswith("Microsoft Sentinel comment by ") and ALICE in p.partition("\n")[0] for p in parts
    )
    assert [c.route for c in writes(env.calls_since(mark)) if c.system == "servicenow"] == ["table.post"]
    for _ in range(2):
        await env.stats()
    assert len(notes(env, rec["sys_id"])) == 1  # never posted again
    assert len(ws.comments(inc["name"])) == 3  # nothing came back to Sentinel


async def test_work_note_becomes_comment_with_deterministic_id(
    env: Env, events: list[dict[str, Any]]
) -> None:
    name, sys_id = await linked(env)
    env.snow.analyst_update(
        "incident", sys_id, {"work_notes": "Blocked 203.0.113.9 at the firewall"}, by="bob.hunter"
    )
    [entry] = notes(env, sys_id)
    stats = await env.stats()
    assert stats.comments_to_sentinel == 1
    [comment] = env.ws().comments(name)
    assert comment["name"] == comment_id(f"{env.stack.workspace_instance('soc')}:{entry['sys_id']}")
    head, _, body = portal_text(comment["properties"]["message"]).partition("\n\n")
    number = env.snow_record(name)["number"]
    assert head.startswith(f"ServiceNow work note by bob.hunter on {number}, ")
    assert body == "Blocked 203.0.113.9 at the firewall"
    for _ in range(2):
        await env.stats()
    assert len(env.ws().comments(name)) == 1
    assert len(notes(env, sys_id)) == 1  # our own comment never comes back as a work note
    assert len(named(events, "comment_to_sentinel")) == 1


async def test_two_entries_in_one_servicenow_update_both_arrive(env: Env) -> None:
    name, sys_id = await linked(env)
    env.snow.analyst_update(
        "incident", sys_id, {"work_notes": "internal: escalate", "comments": "to the user: please reboot"}
    )
    env.snow.analyst_update("incident", sys_id, {"work_notes": "second note"})
    stats = await env.stats()
    assert stats.comments_to_sentinel == 3
    bodies = sorted(m.partition("\n\n")[2] for m in messages(env, name))
    assert bodies == ["internal: escalate", "second note", "to the user: please reboot"]
    kinds = sorted(m.split(" by ")[0] for m in messages(env, name))
    assert kinds == ["ServiceNow additional comment", "ServiceNow work note", "ServiceNow work note"]


async def test_html_and_unicode_round_trip_readably(env: Env) -> None:
    name, sys_id = await linked(env)
    html = (
        "<div>Findings 🔥:<ul><li>שלום – host <i>ws-01</i></li><li>日本語のユーザー</li></ul>"
        '<a href="https://intel.example/ioc/1">IOC</a><br>x &lt; y</div>'
    )
    env.ws().analyst_comment(name, html, author_upn=ALICE)
    unicode_note = "Escalated 🚨 to مركز العمليات and 安全团队 — done ✅"
    env.snow.analyst_update("incident", sys_id, {"work_notes": unicode_note}, by="carol.responder")
    await env.stats()
    to_snow = [n for n in notes(env, sys_id) if n["sys_created_by"] == DEFAULT_SNOW_USER]
    assert [n["value"].partition("\n\n")[2] for n in to_snow] == [
        "Findings 🔥:\n\n- שלום – host ws-01\n- 日本語のユーザー\n\nIOC (https://intel.example/ioc/1)\nx < y"
    ]
    from_snow = [m for m in messages(env, name) if m.startswith("ServiceNow")]
    assert [m.partition("\n\n")[2] for m in from_snow] == [unicode_note]


E3_TEXTS = ("line one\nline two\n\n- a\n- b", "5 < 6 & <tag>", "kept   three spaces")


async def test_e3_journal_text_reads_the_same_in_the_sentinel_portal(env: Env) -> None:
    """REFERENCE E.3: the portal renders comments as HTML; plain text would lose its line breaks
    and its <tag>. The agent escapes the text and writes its line breaks as <br>."""
    name, sys_id = await linked(env)
    for text in E3_TEXTS:
        assert portal_text(text) != text  # what sending the text as it is would show
        env.snow.analyst_update("incident", sys_id, {"work_notes": text}, by="bob.hunter")
    await env.stats()
    shown = [m.partition("\n\n") for m in messages(env, name)]
    assert sorted(body for _head, _, body in shown) == sorted(E3_TEXTS)
    assert all(head.startswith("ServiceNow work note by bob.hunter on INC") for head, _, _ in shown)
    raw = "".join(c["properties"]["message"] for c in env.ws().comments(name))
    assert "5 &lt; 6 &amp; &lt;tag&gt;" in raw and "line one<br>line two<br><br>- a<br>- b" in raw
    assert "<tag>" not in raw
    for _ in range(2):  # and never echoed back as a work note
        await env.stats()
    assert len(notes(env, sys_id)) == len(E3_TEXTS)


async def test_e3_portal_html_reaches_servicenow_as_the_same_text(env: Env) -> None:
    """The other way round: what an analyst types in the portal (stored as HTML) arrives in
    ServiceNow as the text the analyst saw."""
    name, sys_id = await linked(env)
    portal_html = [
        "line one<br>line two<br><br>- a<br>- b",
        "<p>5 &lt; 6 &amp; &lt;tag&gt;</p>",
        "kept &nbsp; three spaces",
    ]
    for html in portal_html:
        env.ws().analyst_comment(name, html, author_upn=ALICE)
    await env.stats()
    got = sorted(n["value"].partition("\n\n")[2] for n in notes(env, sys_id))
    assert [portal_text(h) for h in portal_html[:2]] == list(E3_TEXTS[:2])
    # runs of spaces fold in ServiceNow's plain text, as html_to_text always did
    assert got == sorted([*E3_TEXTS[:2], "kept three spaces"])


async def test_comment_field_and_code_format(env: Env) -> None:
    env.rewrite({"agent": {"comment_field": "comments", "comment_format": "code"}})
    name, sys_id = await linked(env)
    env.ws().analyst_comment(name, "<b>bold</b> [/code] <i>x</i>")
    await env.stats()
    assert notes(env, sys_id, "work_notes") == []
    [entry] = notes(env, sys_id, "comments")
    body = entry["value"].partition("\n\n")[2]
    assert body == "[code]<b>bold</b> [/code&#93; <i>x</i>[/code]"
    await env.stats()
    assert len(env.ws().comments(name)) == 1  # the agent's customer-visible comment is not echoed


async def test_long_texts_are_truncated_with_a_notice(env: Env) -> None:
    name, sys_id = await linked(env)
    env.snow.analyst_update("incident", sys_id, {"work_notes": "🙂" * 20_000})  # 40,000 UTF-16 units
    await env.stats()
    [message] = messages(env, name)
    assert utf16_len(message) <= SENTINEL_MAX
    number = env.snow_record(name)["number"]
    assert message.endswith(f"characters in total; the full text is in ServiceNow {number}]")
    assert "🙂" * 1000 in message
    env.ws().analyst_comment(name, "a" * 30_000)  # Sentinel's own maximum
    await env.stats()
    [note] = [n for n in notes(env, sys_id) if n["sys_created_by"] == DEFAULT_SNOW_USER]
    assert note["value"].endswith("a" * 30_000)  # a full Sentinel comment fits in one note


async def test_comment_limit_warns_once_and_fields_keep_syncing(
    env: Env, events: list[dict[str, Any]]
) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", severity="Low", labels=["snow"])
    for i in range(99):
        ws.analyst_comment(inc["name"], f"note {i}")
    await env.stats()
    sys_id = env.snow_record(inc["name"])["sys_id"]
    env.snow.analyst_update("incident", sys_id, {"work_notes": "fits: the 100th comment"})
    await env.stats()
    assert len(ws.comments(inc["name"])) == 100
    env.snow.analyst_update("incident", sys_id, {"work_notes": "one too many"})
    await env.stats()
    env.snow.analyst_update("incident", sys_id, {"work_notes": "and another", "impact": "1"})
    stats = await env.stats()
    assert stats.failures == 0 and stats.updated_sentinel == 1
    assert ws.incidents[inc["name"]]["properties"]["severity"] == "High"
    assert len(ws.comments(inc["name"])) == 100
    assert len(named(events, "sentinel_comment_limit")) == 1


async def test_comment_that_makes_our_put_conflict_reaches_servicenow_in_that_cycle(
    env: Env, events: list[dict[str, Any]]
) -> None:
    """An analyst comments after the listing, before the agent's PUT of a ServiceNow change:
    the PUT gets 409 and is re-planned on the incident as it is now. That incident changed, so
    its comments are looked at in the same cycle; before, the re-read count was taken as seen
    and the etag stored, and the comment never reached ServiceNow."""
    name, sys_id = await linked(env, severity="Low")
    env.snow.analyst_update("incident", sys_id, {"impact": "1"}, by="bob.hunter")
    env.ws().race_next_put(name, comment="Written while the agent was copying the impact")
    stats = await env.stats()
    assert len(named(events, "sentinel_conflict_replan")) == 1
    assert (stats.updated_sentinel, stats.comments_to_snow) == (1, 1)
    assert env.ws().incidents[name]["properties"]["severity"] == "High"
    [note] = notes(env, sys_id)
    assert note["value"].endswith("\n\nWritten while the agent was copying the impact")
    for _ in range(2):
        await env.stats()
    assert len(notes(env, sys_id)) == 1  # exactly once
    assert len(env.ws().comments(name)) == 1  # and never echoed back


async def test_crash_between_comment_put_and_link_commit_does_not_duplicate(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, sys_id = await linked(env)
    env.snow.analyst_update("incident", sys_id, {"work_notes": "copied exactly once"}, by="bob.hunter")
    real = Shadow.add_comment_link
    crashes = []

    async def crash_once(self: Shadow, link: CommentLink) -> None:
        if link.direction == "to_sentinel" and not crashes:
            crashes.append(link)
            raise sqlite3.OperationalError("disk I/O error (simulated crash)")
        await real(self, link)

    monkeypatch.setattr(Shadow, "add_comment_link", crash_once)
    result = (await env.cycle())["soc"]
    assert isinstance(result, BaseException)  # the cycle died after the PUT, before the commit
    assert len(env.ws().comments(name)) == 1
    for _ in range(2):
        await env.stats()
    assert len(env.ws().comments(name)) == 1  # the repeated PUT hit the same deterministic id
    assert len(notes(env, sys_id)) == 1  # and the Sentinel comment was not copied back


async def test_crash_between_note_patch_and_its_commit_does_not_duplicate(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, sys_id = await linked(env)
    env.ws().analyst_comment(name, "posted exactly once")
    real = Shadow.set_comment_link
    crashes = []

    async def crash_once(self: Shadow, link: CommentLink, **kw: Any) -> CommentLink:
        if kw.get("state") == "posted" and not crashes:
            crashes.append(link)
            raise sqlite3.OperationalError("disk I/O error (simulated crash)")
        return await real(self, link, **kw)

    monkeypatch.setattr(Shadow, "set_comment_link", crash_once)
    result = (await env.cycle())["soc"]
    assert isinstance(result, BaseException)
    assert len(notes(env, sys_id)) == 1  # the PATCH landed; its link is still "pending"
    for _ in range(2):
        await env.stats()
    assert len(notes(env, sys_id)) == 1  # resolved from the journal, not posted again
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        [link] = await shadow.comment_links(env.stack.workspace_instance("soc"), "soc", name)
    assert link.state == "confirmed" and link.journal_sys_id == notes(env, sys_id)[0]["sys_id"]


async def test_crash_before_the_patch_lands_posts_the_comment_later(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, sys_id = await linked(env)
    env.ws().analyst_comment(name, "must arrive")
    real = ServiceNowClient.patch
    crashes = []

    async def die_first(self: ServiceNowClient, sys_id: str, values: dict[str, str], fields: Any) -> Any:
        if "work_notes" in values and not crashes:
            crashes.append(values)
            raise RuntimeError("killed before the request left (simulated)")
        return await real(self, sys_id, values, fields)

    monkeypatch.setattr(ServiceNowClient, "patch", die_first)
    result = (await env.cycle())["soc"]
    assert isinstance(result, BaseException)
    assert notes(env, sys_id) == []
    await env.stats()
    [note] = notes(env, sys_id)
    assert note["value"].endswith("must arrive")
    await env.stats()
    assert len(notes(env, sys_id)) == 1


async def test_lost_response_of_a_note_patch_is_resolved_not_reposted(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PATCH landed but its answer was lost (outcome unknown): the next cycle finds the
    entry in the journal and links it instead of writing it again."""
    from agent.errors import TransientError

    name, sys_id = await linked(env)
    env.ws().analyst_comment(name, "answer lost")
    real = ServiceNowClient.patch
    lost = []

    async def lose_answer(self: ServiceNowClient, sys_id: str, values: dict[str, str], fields: Any) -> Any:
        result = await real(self, sys_id, values, fields)
        if "work_notes" in values and not lost:
            lost.append(values)
            raise TransientError("servicenow", "PATCH", "incident", None, "ReadTimeout", "no answer")
        return result

    monkeypatch.setattr(ServiceNowClient, "patch", lose_answer)
    stats = await env.stats()
    assert (stats.failures, stats.comments_deferred) == (0, 1) and len(notes(env, sys_id)) == 1
    backoff_passed(env)
    for _ in range(2):
        await env.stats()
    assert len(notes(env, sys_id)) == 1


async def test_refused_note_is_not_left_pending_and_fields_still_sync(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, sys_id = await linked(env)
    env.ws().analyst_comment(name, "refused once")
    env.ws().analyst_update(name, severity="High")
    real = ServiceNowClient.patch

    async def refuse_notes(self: ServiceNowClient, sys_id: str, values: dict[str, str], fields: Any) -> Any:
        if "work_notes" in values:
            raise PermanentError("servicenow", "PATCH", "incident", 403, "Forbidden", "ACL Exception")
        return await real(self, sys_id, values, fields)

    monkeypatch.setattr(ServiceNowClient, "patch", refuse_notes)
    stats = await env.stats()
    # the comment waits; the field synced regardless
    assert (stats.failures, stats.comments_deferred, stats.updated_snow) == (0, 1, 1)
    assert notes(env, sys_id) == [] and env.snow_record(name)["impact"] == "1"
    monkeypatch.setattr(ServiceNowClient, "patch", real)
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        assert await shadow.comment_links(env.stack.workspace_instance("soc"), "soc", name) == []
    backoff_passed(env)
    await env.stats()
    assert [n["value"].partition("\n\n")[2] for n in notes(env, sys_id)] == ["refused once"]


async def test_missing_journal_read_acl_warns_once_and_never_reposts(
    env: Env, events: list[dict[str, Any]]
) -> None:
    env.snow.add_api_user("svc_blind", env.stack.snow_password, journal_read=False)
    env.rewrite({"servicenow": {"username": "svc_blind"}})
    name, sys_id = await linked(env)
    env.ws().analyst_comment(name, "one")
    await env.stats()
    env.ws().analyst_comment(name, "two")
    for _ in range(3):
        await env.stats()
    assert [n["value"].partition("\n\n")[2] for n in notes(env, sys_id)] == ["one", "two"]
    [warning] = named(events, "journal_unreadable")
    assert warning["level"] == "warning" and "sys_journal_field" in warning["message"]


async def test_lost_shadow_duplicates_no_comment(env: Env) -> None:
    name, sys_id = await linked(env)
    env.ws().analyst_comment(name, "from Sentinel")
    env.snow.analyst_update("incident", sys_id, {"work_notes": "from ServiceNow"}, by="bob.hunter")
    await env.stats()
    assert len(notes(env, sys_id)) == 2 and len(env.ws().comments(name)) == 2
    for suffix in ("", "-wal", "-shm"):
        (env.tmp / f"state.db{suffix}").unlink(missing_ok=True)
    mark = env.stack.recorder.mark()
    stats = await env.stats()
    assert stats.adopted == 1
    assert len(notes(env, sys_id)) == 2 and len(env.ws().comments(name)) == 2
    assert [c.route for c in writes(env.calls_since(mark))] == ["comments.put"]  # the same id, rewritten
    await env.stats()
    assert len(notes(env, sys_id)) == 2 and len(env.ws().comments(name)) == 2


async def test_calls_for_one_comment_each_way(env: Env, comment_mode: str) -> None:
    """What one new comment costs in calls, each way (asserted so it cannot creep).

    Both halves of the pair are in this cycle's listings here (the other half was modified at
    the watermark); otherwise one more read fetches it (a batched sys_idIN or one GET).
    """
    name, sys_id = await linked(env)
    await env.stats()

    def since(mark: int) -> list[tuple[str, str]]:
        return [(c.system, c.route) for c in env.calls_since(mark) if c.system != "entra"]

    idle = [("sentinel", "incidents.list"), ("servicenow", "table.list")]
    if comment_mode == ETAG_ONLY:  # the open check, every cycle in this mode (see comment_mode)
        idle.insert(1, ("sentinel", "incidents.list"))
    env.ws().analyst_comment(name, "Sentinel -> ServiceNow")
    mark = env.stack.recorder.mark()
    await env.stats()
    assert since(mark) == [
        *idle,
        ("sentinel", "comments.list"),
        ("servicenow", "table.patch"),
        ("servicenow", "table.list"),  # the journal read confirming the entry
    ]
    mark = env.stack.recorder.mark()
    await env.stats()
    assert since(mark) == idle
    env.snow.analyst_update("incident", sys_id, {"work_notes": "ServiceNow -> Sentinel"})
    mark = env.stack.recorder.mark()
    await env.stats()
    assert since(mark) == [*idle, ("servicenow", "table.list"), ("sentinel", "comments.put")]
    mark = env.stack.recorder.mark()
    await env.stats()
    # Our PUT moved the incident's etag; commentsCount tells no comment was added: no listing.
    assert since(mark) == idle
    mark = env.stack.recorder.mark()
    await env.stats()
    assert since(mark) == idle


# --- the text helpers (pure) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("plain text, no tags: a < b", "plain text, no tags: a < b"),
        ("<p>one</p><p>two</p>", "one\n\ntwo"),
        ("line<br>break<br/>again", "line\nbreak\nagain"),
        ("<ol><li>a</li><li>b</li></ol>after", "- a\n- b\n\nafter"),
        ('<a href="https://x.example/">https://x.example/</a>', "https://x.example/"),
        ('<a href="javascript:alert(1)">click</a>', "click"),
        ("<style>p{}</style><script>evil()</script>kept", "kept"),
        ("<p>code:</p><pre>  keep\n    indent</pre>", "code:\n\n  keep\n    indent"),
        ("&lt;b&gt; &amp; &#x1F600; &eacute;", "<b> & 😀 é"),
        ("<img src=x alt='screenshot'>", "[screenshot]"),
        ("<table><tr><th>k</th><th>v</th></tr><tr><td>1</td><td>2</td></tr></table>", "k | v\n1 | 2"),
    ],
)
def test_html_to_text(html: str, text: str) -> None:
    from agent.core.text import html_to_text

    assert html_to_text(html) == text


def test_cap_html_measures_after_escaping() -> None:
    text = "a < b & c\n" * 5000  # 50,000 characters, about 115,000 once escaped
    capped = cap_html(text, SENTINEL_MAX, "ServiceNow INC0010001")
    assert utf16_len(capped) <= SENTINEL_MAX and utf16_len(capped) > SENTINEL_MAX - 40
    shown = portal_text(capped)
    assert shown.startswith("a < b & c\na < b & c\n")
    notice = "[... truncated: 50,000 characters in total; the full text is in ServiceNow INC0010001]"
    assert shown.endswith(notice)
    assert cap_html("short & sweet", SENTINEL_MAX, "x") == "short &amp; sweet"


def test_cap_counts_utf16_and_never_splits_a_character() -> None:
    from agent.core.text import cap

    text = "😀" * 100  # 200 UTF-16 units
    assert cap(text, 200, "there", utf16=True) == text
    capped = cap(text, 150, "there", utf16=True)
    assert utf16_len(capped) <= 150
    head, _, notice = capped.partition("\n\n")
    assert set(head) == {"😀"} and notice.startswith("[... truncated: 200 characters in total")
    assert cap("x" * 100, 90, "INC1").endswith("the full text is in INC1]")
    with pytest.raises(ValueError, match="limit 10 leaves no room for text"):
        cap("x" * 100, 10, "somewhere with a long name")


@pytest.mark.parametrize("faulty", [False, True], ids=["clean", "faults"])
async def test_simulated_analysts_every_comment_mirrored_exactly_once(env: Env, faulty: bool) -> None:
    """Random analyst work on both sides (the seeded simulator), optionally with dropped
    connections and 503s on every write: afterwards every analyst comment and work note exists
    exactly once on the other side, and nothing the agent wrote came back."""
    await simulate_and_check(env, seed=5, faulty=faulty)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(40))
async def test_simulated_analysts_many_seeds_with_faults(env: Env, seed: int) -> None:
    await simulate_and_check(env, seed=seed, faulty=True)


async def simulate_and_check(env: Env, *, seed: int, faulty: bool) -> None:
    from agent.testing.emulators.simulator import Simulator

    sim = Simulator(env.stack, seed=seed)
    sim.seed(["soc"], 12)
    if faulty:
        for route in ("table.patch", "table.post"):
            env.snow.faults.set(route, rate_503=0.15, rate_drop=0.1)
        env.stack.sentinel.faults.set("comments.put", rate_503=0.15, rate_drop=0.1)

    async def cycle() -> None:
        await env.stats(force=True)  # random closes may trip the close-ratio valve on so few links
        backoff_passed(env)

    await cycle()
    for _ in range(8):
        for _ in range(10):
            sim.step()
        await cycle()
    env.snow.faults.clear()
    env.stack.sentinel.faults.clear()
    for _ in range(3):
        await cycle()
    instance = env.stack.workspace_instance("soc")
    checked = 0
    for rec in env.snow_records():
        name = rec["correlation_id"]
        comments = env.ws().comments(name)
        journal = env.snow.journal(rec["sys_id"])
        # an opening entry carries several parts (tests.sync_invariants.entry_parts): count those
        ours = [
            p for e in journal if e["sys_created_by"] == DEFAULT_SNOW_USER for p in entry_parts(e["value"])
        ]
        theirs = [e for e in journal if e["sys_created_by"] != DEFAULT_SNOW_USER]
        mirrors = {comment_id(f"{instance}:{e['sys_id']}") for e in theirs}
        by_analysts = [c for c in comments if c["name"] not in mirrors]
        # every analyst comment is one of our journal entries, once (texts may repeat: compare counts)
        for c in by_analysts:
            assert c["properties"]["author"].get("userPrincipalName"), "the agent's comment came back"
        for text in {c["properties"]["message"] for c in by_analysts}:
            sent = sum(1 for c in by_analysts if c["properties"]["message"] == text)
            assert sum(1 for p in ours if p.endswith("\n\n" + text)) == sent, text
        # every analyst journal entry is one Sentinel comment with its deterministic id
        assert sorted(c["name"] for c in comments if c["name"] in mirrors) == sorted(mirrors)
        # what else we wrote are the alert and entity notes
        rest = [p for p in ours if not p.startswith("Microsoft Sentinel comment by ")]
        assert all(("Microsoft Sentinel alerts" in p) or ("entities (" in p) for p in rest)
        assert len(ours) == len(by_analysts) + len(rest)
        checked += len(comments)
    assert checked >= 10  # the scenario really exercised comments


async def test_e2_comment_that_does_not_move_the_modified_time_arrives_within_the_open_check_interval(
    env: Env, comment_mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REFERENCE E.2 with the default open_check_interval (10 min): a comment that changes only
    the etag is not in the modification-time listing; the next open check brings it over."""
    if comment_mode == MOVES:
        pytest.skip("the modification-time listing finds it at once (every other test here)")
    env.defaults = {}
    env.rewrite({})
    name, sys_id = await linked(env)  # the first listing counts as an open check: its clock starts
    env.stack.clock.advance(300)  # another change moves the watermark past this one's overlap
    env.ws().create_incident(title="later", labels=["snow"])
    await env.stats()
    env.ws().analyst_comment(name, "seen by the etag only", author_upn=ALICE)
    stats = await env.stats()
    assert (stats.open_check, stats.comments_to_snow, notes(env, sys_id)) == (False, 0, [])
    later = clock.utcnow() + timedelta(minutes=10, seconds=1)
    monkeypatch.setattr(clock, "utcnow", lambda: later)
    stats = await env.stats()
    assert (stats.open_check, stats.comments_to_snow) == (True, 1)
    [note] = notes(env, sys_id)
    assert note["value"].endswith("\n\nseen by the etag only")
