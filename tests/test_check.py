"""``check`` against the emulators: one line per probe, a hint under each failure, nothing written."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from agent.app.check import FAIL, OK, SKIP, WARN
from agent.cli import commands
from agent.store import StoreTarget
from agent.testing.emulators.servicenow_tables import CHOICES
from tests.e2e import Env, writes
from tests.test_cli import run_cli


async def _check(env: Env, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = await commands.check(env.config)
    out = capsys.readouterr().out
    return code, out.splitlines()


def _lines(lines: list[str], status: str, *words: str) -> list[str]:
    return [line for line in lines if line.startswith(f"{status} ") and all(w in line for w in words)]


def _hint_after(lines: list[str], line: str) -> str:
    following = lines[lines.index(line) + 1]
    assert following.lstrip().startswith("hint:"), following
    return following


async def _synced_with_note(env: Env) -> tuple[str, str]:
    """One incident synced to a ServiceNow record that carries a work note."""
    inc = env.ws().create_incident(title="probe target", labels=["snow"])
    await env.stats()
    rec = env.snow_record(inc["name"])
    env.snow.analyst_update("incident", rec["sys_id"], {"work_notes": "looked at it"})
    return inc["name"], rec["sys_id"]


async def test_everything_ok_and_nothing_changes(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    name, sys_id = await _synced_with_note(env)
    etag = env.ws().incidents[name]["etag"]
    before = env.snow.record("incident", sys_id)
    mark = env.stack.recorder.mark()
    code, lines = await _check(env, capsys)
    assert code == 0, "\n".join(lines)
    assert not _lines(lines, FAIL)
    for words in (
        ("config", "is valid"),
        ("[oauth:default]", "token obtained"),
        ("[workspace:soc]", "readable"),
        ("[workspace:soc]", "Responder", "409"),
        ("[servicenow:default]", "table incident readable"),
        ("[servicenow:default]", "writable", before["number"]),
        ("[servicenow:default]", "sys_journal_field readable", before["number"]),
        ("[servicenow:default]", "[status_to_sentinel]", "every active choice"),
        ("[servicenow:default]", "[closure_to_servicenow]", "active choices"),
    ):
        assert _lines(lines, OK, *words), (words, lines)
    assert lines[-1].startswith(
        f"{len([x for x in lines if x[:4] in ('ok  ', 'FAIL', 'warn', 'skip')])} checks:"
    )
    # nothing changed: the stale-etag PUT was refused, the no-op PATCH skipped by the platform
    assert env.ws().incidents[name]["etag"] == etag
    assert env.snow.record("incident", sys_id) == before
    calls = env.calls_since(mark)
    assert [(c.system, c.method, c.status) for c in writes(calls)] == [
        ("sentinel", "PUT", 409),
        ("servicenow", "PATCH", 200),
    ]
    journal_reads = [c for c in calls if c.system == "servicenow" and "sys_journal_field" in c.path]
    assert journal_reads, "the journal probe must send a request"


async def test_expired_secret_is_named_with_its_aadsts_code(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.stack.entra.expire_secret(env.stack.client_id)
    code, lines = await _check(env, capsys)
    assert code == 1
    [line] = _lines(lines, FAIL, "[oauth:default]", "AADSTS7000222")
    assert "expired" in _hint_after(lines, line)
    assert _lines(lines, SKIP, "[workspace:soc]", "no token")
    assert env.stack.client_secret not in "\n".join(lines)


async def test_wrong_secret_is_named_as_such(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    secret_file = env.config_path.with_name(f"{env.config_path.stem}.client-secret")
    secret_file.write_text("not-the-secret-value-at-all\n")
    code, lines = await _check(env, capsys)
    assert code == 1
    [line] = _lines(lines, FAIL, "[oauth:default]", "AADSTS7000215")
    assert "Value (not its Secret ID)" in _hint_after(lines, line)


async def test_reader_role_fails_the_responder_probe(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    inc = env.ws().create_incident(title="any incident", labels=[])
    env.stack.sentinel.set_role(env.stack.client_id, "Reader")
    etag = env.ws().incidents[inc["name"]]["etag"]
    code, lines = await _check(env, capsys)
    assert code == 1
    assert _lines(lines, OK, "[workspace:soc]", "readable")
    [line] = _lines(lines, FAIL, "[workspace:soc]", "403")
    assert "Microsoft Sentinel Responder" in _hint_after(lines, line)
    assert env.ws().incidents[inc["name"]]["etag"] == etag


async def test_empty_workspace_skips_the_responder_probe(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = await _check(env, capsys)
    assert code == 0
    assert _lines(lines, SKIP, "[workspace:soc]", "Responder", "no incident")
    assert _lines(lines, SKIP, "[servicenow:default]", "write access", "not proven")


async def test_e6_missing_journal_read_acl_is_a_warning_naming_the_fallback(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    _name, _sys_id = await _synced_with_note(env)
    env.snow.deny_journal_read(env.stack.snow_user)
    code, lines = await _check(env, capsys)
    assert code == 0  # a warning, not a failure: the sync works through the display values
    [line] = _lines(
        lines, WARN, "[servicenow:default]", "sys_journal_field returned no entries", "display values"
    )
    assert "read access to sys_journal_field" in _hint_after(lines, line)
    env.snow.deny_journal_read(env.stack.snow_user, denied=False)
    code, lines = await _check(env, capsys)
    assert _lines(lines, OK, "[servicenow:default]", "journals are read from it")


async def test_missing_write_acl_fails_without_writing(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    _name, sys_id = await _synced_with_note(env)
    before = env.snow.record("incident", sys_id)
    env.snow.add_api_user(env.stack.snow_user, env.stack.snow_password, write=False)
    code, lines = await _check(env, capsys)
    assert code == 1
    [line] = _lines(lines, FAIL, "[servicenow:default]", "not writable", "ACL")
    assert "itil" in _hint_after(lines, line)
    assert env.snow.record("incident", sys_id) == before


async def test_mapping_rows_and_choices_checked_against_the_instance(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.rewrite(
        {
            "servicenow": {"caller_id": "nobody.here"},
            "status_to_sentinel": {"1": "New", "2": "Active", "6": "Closed"},
            "closure_to_servicenow": {
                "Undetermined": "No resolution provided",
                "TruePositive": "Solved (Permanently)",
                "BenignPositive": "Resolved by caller",
                "FalsePositive": "No resolution provided",
            },
            "owners": {"alice.analyst": "alice@contoso.example", "ghost.user": "ghost@contoso.example"},
        }
    )
    code, lines = await _check(env, capsys)
    assert code == 1
    [unmapped] = _lines(lines, FAIL, "[status_to_sentinel]", "'3'", "'7'", "'8'")
    assert "value_unmapped" in _hint_after(lines, unmapped)
    [closure] = _lines(lines, FAIL, "[closure_to_servicenow]", "'Solved (Permanently)'")
    assert "Solution provided" in _hint_after(lines, closure)
    assert _lines(lines, FAIL, "caller_id nobody.here", "not found")
    assert _lines(lines, FAIL, "[owners]", "ghost.user")
    assert not _lines(lines, FAIL, "alice.analyst")
    assert _lines(lines, OK, "[severity_to_servicenow]")


async def test_check_command_exit_code_and_hint(env: Env) -> None:
    env.stack.entra.expire_secret(env.stack.client_id)
    code, out, err = await run_cli("-c", str(env.config_path), "check")
    assert code == 1, err
    assert "FAIL  [oauth:default]" in out and "hint:" in out
    assert '"event"' not in out  # the checklist, not log lines


async def test_an_unreachable_state_database_is_a_fail_line_among_the_others(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = StoreTarget("postgresql", f"postgresql://sync@127.0.0.1:{port}/sync?connect_timeout=2")
    config = dataclasses.replace(env.config, agent=dataclasses.replace(env.config.agent, store=target))
    capsys.readouterr()
    code = await commands.check(config)
    lines = capsys.readouterr().out.splitlines()
    assert code == 1, "\n".join(lines)
    (state,) = _lines(lines, FAIL, "[agent] state", "cannot connect")
    assert "README" in _hint_after(lines, state)
    # the remotes were still probed
    assert _lines(lines, OK, "[oauth:default]", "token obtained")
    assert _lines(lines, OK, "[servicenow:default]", "table incident readable")


def _close_code_choice(env: Env, code: str, *, inactive: bool = False) -> None:
    row = {"name": "incident", "element": "close_code", "value": code, "label": code, "sequence": "50"}
    env.snow.insert("sys_choice", row | {"inactive": "true" if inactive else "false"})


async def test_close_codes_without_a_row_warn_and_do_not_fail(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    # Close codes are instance-defined (an open set): an unlisted one closes as Undetermined,
    # which check says once per code, as a warning (issue #13, item 5).
    for code in ("Solved (Permanently)", "Closed/Resolved by Caller"):
        _close_code_choice(env, code)
    _close_code_choice(env, "Retired", inactive=True)
    listed = {"Solution provided": "TruePositive/SuspiciousActivity"}
    env.rewrite({"closure_to_sentinel": listed})
    await _synced_with_note(env)
    code, lines = await _check(env, capsys)
    assert code == 0, "\n".join(lines)
    warned = _lines(lines, WARN, "[servicenow:default]", "close code", "as Undetermined")
    named = sorted(line.split("close code ", 1)[1].split(" (an active", 1)[0] for line in warned)
    seeded = {row[0] for row in CHOICES["close_code"]} - set(listed)  # the instance's own codes
    expected = seeded | {"Solved (Permanently)", "Closed/Resolved by Caller"}
    assert named == sorted(repr(c) for c in expected)
    assert "[closure_to_sentinel]" in _hint_after(lines, warned[0])


async def test_close_codes_all_placed_by_a_written_star_row(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    _close_code_choice(env, "Solved (Permanently)")
    env.rewrite({"closure_to_sentinel": {"*": "Undetermined"}})
    code, lines = await _check(env, capsys)
    assert code == 0, "\n".join(lines)
    assert not _lines(lines, WARN, "close code")
    assert _lines(lines, OK, "[closure_to_sentinel] places every active choice")
