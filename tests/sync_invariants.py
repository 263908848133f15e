"""The invariants a converged sync must satisfy, checked against the emulators' own state and
the agent's state database (read directly, so it works while another process owns it).

Used by the crash, fault, stateful and hostile-input tests:

* one ServiceNow record per Sentinel incident (``correlation_id``), none without a link;
* every labelled, open, recent Sentinel incident is linked;
* both sides agree on every synced field (severity, status, owner) *by meaning*, through the
  configured maps;
* the shadow matches both sides: each link's agreed values are the current values of both
  sides, and its etag / ``sys_mod_count`` are the current ones;
* the ServiceNow number was written back as a Sentinel label;
* comments: nothing the agent copied exists twice; once comment sync is active (``comments``),
  every analyst comment made after the pair was linked exists exactly once on the other side.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.config import Config
from agent.connectors.sentinel.models import parse_arm_time
from agent.connectors.servicenow.models import parse_snow_time
from agent.sync import clock
from agent.testing.emulators.stack import EmulatorStack

JOURNAL_ELEMENTS = ("work_notes", "comments")


@dataclass
class ShadowLink:
    workspace: str
    incident: str
    sys_id: str
    number: str
    fields: dict[str, tuple[str, str]]
    sentinel_etag: str | None
    snow_mod_count: int | None
    open: bool
    created_at: datetime | None


@dataclass
class Findings:
    """What one check found. ``problems`` empty means every invariant holds."""

    problems: list[str] = field(default_factory=list)
    links: int = 0
    records: int = 0
    comments_checked: int = 0
    comment_links: int = 0

    def add(self, text: str) -> None:
        self.problems.append(text)

    def __bool__(self) -> bool:
        return not self.problems


def read_shadow(path: Path, instance: str = "default") -> tuple[list[ShadowLink], int]:
    """Every link of ``instance`` and the number of comment links, from the state database."""
    if not path.exists():
        return [], 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "links" not in tables:
            return [], 0
        links = [
            ShadowLink(
                workspace=row["workspace"],
                incident=row["incident"],
                sys_id=row["sys_id"],
                number=row["number"],
                fields={k: (str(v[0]), str(v[1])) for k, v in orjson.loads(row["fields"]).items()},
                sentinel_etag=row["sentinel_etag"],
                snow_mod_count=row["snow_mod_count"],
                open=bool(row["open"]),
                created_at=datetime.fromisoformat(row["created_at"]) if row["created_at"] else None,
            )
            for row in db.execute("SELECT * FROM links WHERE instance = ?", (instance,))
        ]
        comments = int(db.execute("SELECT count(*) FROM comment_links").fetchone()[0])
        return links, comments
    finally:
        db.close()


def read_postgres(config: Config, instance: str = "default") -> tuple[list[ShadowLink], int]:
    """:func:`read_shadow` for a PostgreSQL state (a blocking read: the emulators stand still)."""
    import psycopg
    from psycopg.rows import dict_row

    target = config.agent.state
    password = target.password.reveal() if target.password else None
    with psycopg.connect(target.value, password=password, row_factory=dict_row, connect_timeout=10) as db:
        links = [
            ShadowLink(
                workspace=row["workspace"],
                incident=row["incident"],
                sys_id=row["sys_id"],
                number=row["number"],
                fields={k: (str(v[0]), str(v[1])) for k, v in row["fields"].items()},
                sentinel_etag=row["sentinel_etag"],
                snow_mod_count=row["snow_mod_count"],
                open=bool(row["open"]),
                created_at=row["created_at"],
            )
            for row in db.execute("SELECT * FROM links WHERE instance = %s", (instance,))
        ]
        row = db.execute("SELECT count(*) AS n FROM comment_links").fetchone()
        return links, int(row["n"]) if row else 0


def read_state(config: Config, instance: str = "default") -> tuple[list[ShadowLink], int]:
    if config.agent.state.kind == "postgresql":
        return read_postgres(config, instance)
    return read_shadow(config.agent.state_db, instance)


class Checker:
    """Checks one stack + config + state database (one ServiceNow instance)."""

    def __init__(self, stack: EmulatorStack, config: Config, instance: str = "default") -> None:
        self.stack = stack
        self.config = config
        self.instance = instance
        self.snow = stack.snow[instance]
        m = config.mappings
        self.sev_to_snow, self.sev_to_sentinel = m.severity_to_servicenow, m.severity_to_sentinel
        self.status_to_snow, self.status_to_sentinel = m.status_to_servicenow, m.status_to_sentinel
        ids = stack.snow_user_ids[instance]
        self.upn_to_sys_id = {a.upn.lower(): ids[a.user_name] for a in stack.analysts}
        self.sys_id_to_upn = {v: k for k, v in self.upn_to_sys_id.items()}
        inst = config.servicenow[instance]
        self.severity_field, self.status_field = inst.severity_field, inst.status_field
        self.unique_key = inst.unique_key

    # --- the whole check ------------------------------------------------------------------

    def check(
        self,
        workspaces: Sequence[str],
        *,
        comments: bool | None = None,
        strict_shadow: bool = True,
        expect_linked: bool = True,
    ) -> Findings:
        """Every invariant over ``workspaces``. ``comments``: None = on when the shadow holds
        comment links. ``strict_shadow`` also requires etag / mod count to be the current ones
        (true once a fault-free cycle found nothing to do)."""
        found = Findings()
        links, comment_links = read_state(self.config, self.instance)
        found.comment_links = comment_links
        comments_on = comment_links > 0 if comments is None else comments
        found.links = len(links)
        records = [r for r in self.snow.tables["incident"].values() if r.get(self.unique_key)]
        found.records = len(records)
        by_key = Counter(r[self.unique_key] for r in records)
        for key, count in by_key.items():
            if count > 1:
                found.add(f"{count} ServiceNow records for incident {key}")
        by_sys = {lk.sys_id: lk for lk in links}
        for rec in records:
            if rec["sys_id"] not in by_sys:
                found.add(f"record {rec['number']} ({rec[self.unique_key]}) has no link")
        for name in workspaces:
            ws_links = {lk.incident: lk for lk in links if lk.workspace == name}
            if expect_linked:
                self._all_linked(name, ws_links, found)
            for link in ws_links.values():
                self._pair(name, link, found, comments_on, strict_shadow)
        return found

    def _all_linked(self, name: str, links: dict[str, ShadowLink], found: Findings) -> None:
        ws_cfg = self.config.workspaces[name]
        # The agent's own clock (tests move it to let backoffs pass), an hour's slack.
        oldest = clock.utcnow() - timedelta(days=ws_cfg.max_age_days) + timedelta(hours=1)
        for inc_name, inc in self.stack.workspaces[name].incidents.items():
            p = inc["properties"]
            labels = [lbl.get("labelName") for lbl in p.get("labels") or []]
            selected = not ws_cfg.incident_filter or any(x in labels for x in ws_cfg.incident_filter)
            wanted = selected and p.get("status") != "Closed"
            if wanted and parse_arm_time(p["createdTimeUtc"]) >= oldest and inc_name not in links:
                found.add(f"[{name}] open labelled incident {inc_name} is not linked")

    # --- one pair -------------------------------------------------------------------------

    def _pair(
        self, name: str, link: ShadowLink, found: Findings, comments_on: bool, strict_shadow: bool
    ) -> None:
        ws = self.stack.workspaces[name]
        inc = ws.incidents.get(link.incident)
        rec = self.snow.tables["incident"].get(link.sys_id)
        where = f"[{name}] {link.incident} / {link.number}"
        if inc is None or rec is None:
            found.add(f"{where}: {'incident' if inc is None else 'record'} missing")
            return
        p = inc["properties"]
        s = {
            "severity": str(p.get("severity") or ""),
            "status": str(p.get("status") or ""),
            "owner": ((p.get("owner") or {}).get("userPrincipalName") or "").lower(),
        }
        n = {
            "severity": rec.get(self.severity_field, ""),
            "status": rec.get(self.status_field, ""),
            "owner": rec.get("assigned_to", ""),
        }
        for f in ("severity", "status", "owner"):
            if not self.agree(f, s[f], n[f]):
                found.add(f"{where}: {f} differs: sentinel {s[f]!r}, servicenow {n[f]!r}")
            base = link.fields.get(f)
            if base is not None and base != (s[f], n[f]):
                found.add(f"{where}: shadow {f} {base} but sides are ({s[f]!r}, {n[f]!r})")
        if strict_shadow:
            if link.sentinel_etag != inc["etag"]:
                found.add(f"{where}: shadow etag {link.sentinel_etag} != {inc['etag']}")
            if link.snow_mod_count != int(rec.get("sys_mod_count") or 0):
                found.add(f"{where}: shadow mod count {link.snow_mod_count} != {rec.get('sys_mod_count')}")
        closed = s["status"] == "Closed" and n["status"] in ("6", "7", "8")
        if link.open == closed:
            found.add(f"{where}: shadow open={link.open} but both closed={closed}")
        labels = [lbl.get("labelName") for lbl in p.get("labels") or []]
        if self.config.agent.writeback_label and link.number not in labels:
            found.add(f"{where}: number {link.number} not written back as a label")
        self._comments(where, ws.comments(link.incident), link, found, comments_on)

    def agree(self, f: str, s: str, n: str) -> bool:
        """Whether a Sentinel value and a ServiceNow value mean the same (the configured maps)."""
        if f == "owner":
            return self.upn_to_sys_id.get(s, s) == n or self.sys_id_to_upn.get(n, n) == s
        to_snow, to_sentinel = (
            (self.sev_to_snow, self.sev_to_sentinel)
            if f == "severity"
            else (self.status_to_snow, self.status_to_sentinel)
        )
        return to_snow.get(s) == n or to_sentinel.get(n) == s

    # --- comments -------------------------------------------------------------------------

    def _comments(
        self,
        where: str,
        sentinel_comments: list[dict[str, Any]],
        link: ShadowLink,
        found: Findings,
        comments_on: bool,
    ) -> None:
        journal = [
            j
            for j in self.snow.tables["sys_journal_field"].values()
            if j["element_id"] == link.sys_id and j["element"] in JOURNAL_ELEMENTS
        ]
        agent_user = self.stack.snow_user
        s_analyst = [
            c for c in sentinel_comments if (c["properties"].get("author") or {}).get("userPrincipalName")
        ]
        s_agent = [c["properties"]["message"] for c in sentinel_comments if c not in s_analyst]
        n_analyst = [j for j in journal if j["sys_created_by"] != agent_user]
        n_agent = [p for j in journal if j["sys_created_by"] == agent_user for p in entry_parts(j["value"])]
        linked_at = link.created_at
        written = {
            "ServiceNow": [(c["properties"]["message"], _arm(c)) for c in s_analyst],
            "Sentinel": [(j["value"], parse_snow_time(j["sys_created_on"])) for j in n_analyst],
        }
        copies = {"ServiceNow": n_agent, "Sentinel": s_agent}
        every_text = {t for texts in written.values() for t, _ in texts}
        for side, texts in written.items():
            total = Counter(t for t, _ in texts)
            # Written after the pair was linked (a second's slack: ServiceNow stamps whole seconds).
            after = Counter(
                t for t, at in texts if linked_at is None or at >= linked_at - timedelta(seconds=1)
            )
            for text in every_text:
                # An echo (a copy copied back) shows up as more copies than originals.
                copied = sum(1 for c in copies[side] if text in c)
                found.comments_checked += 1
                if copied > total[text]:
                    found.add(f"{where}: {text[:60]!r} copied {copied}x to {side} (written {total[text]}x)")
                elif comments_on and copied < after[text]:
                    found.add(f"{where}: {text[:60]!r} missing on {side} ({copied} of {after[text]})")


_COMMENT_PART = re.compile(r"\n\n(?=Microsoft Sentinel comment by )")


def entry_parts(value: str) -> list[str]:
    """What one journal entry of the agent carries: a new ticket's opening entry holds its alert
    and entity notes and every comment made before it, each comment below its own header; any
    other entry is one part."""
    return _COMMENT_PART.split(value)


def _arm(comment: dict[str, Any]) -> datetime:
    return parse_arm_time(comment["properties"]["createdTimeUtc"])


def all_problems(findings: Iterable[Findings]) -> list[str]:
    return [p for f in findings for p in f.problems]


class TimeTravel:
    """The engine's clock, movable: failures back off for minutes to hours, and a test that
    wants them retried lets that time pass instead of waiting for it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = timedelta()
        monkeypatch.setattr(clock, "utcnow", lambda: datetime.now(UTC) + self.offset)

    def advance(self, delta: timedelta) -> None:
        self.offset += delta
