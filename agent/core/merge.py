"""The sync decision: a pure, field-level three-way merge.

:func:`plan` compares each side with *its own* last agreed value (the shadow's ``base``), never
Sentinel's clock against ServiceNow's, and returns what to write where. It does no I/O, reads no
clock, logs nothing and draws no random numbers, so the same inputs always give the same plan.

Terms. Per field ``f`` the base is the pair ``(bs, bn)`` agreed after the last successful sync
(absent for a field, or ``base is None`` for the whole pair, means "no base"); ``s`` and ``n``
are the current Sentinel and ServiceNow values, each in its own side's terms. "map" goes through
``Policy.to_snow[f]`` / ``Policy.to_sentinel[f]``. ``s`` and ``n`` are *equal by meaning* when
``to_snow[f].get(s) == n`` or ``to_sentinel[f].get(n) == s``; maps may be lossy (Sentinel's
Informational and Low both map to ServiceNow impact ``3``, which maps back to Low).

Decision table (one row per ``Plan.cases`` value, each tested by ``test_<case>``):

=============================  =======================================  ======================================
case                           meaning                                  action
=============================  =======================================  ======================================
unchanged                      s == bs and n == bn                      nothing
sentinel_changed               s != bs, n == bn                         ServiceNow := map(s);
                                                                        base := (s, map(s))
sentinel_changed_equivalent    s != bs, n == bn, s already equals n     no write; base := (s, n)
                               by meaning
snow_changed                   n != bn, s == bs                         Sentinel := map(n);
                                                                        base := (map(n), n)
snow_changed_equivalent        n != bn, s == bs, n already equals s     no write; base := (s, n)
                               by meaning
both_changed_agree             both changed, equal by meaning           no write; base := (s, n)
both_changed_conflict          both changed, different meaning          the policy's winner is copied to
                                                                        the loser; base := that pair;
                                                                        a FieldConflict is reported
no_base_agree                  no base, equal by meaning                no write; base := (s, n)
no_base_conflict               no base, different meaning               as both_changed_conflict
unmapped                       the value that would be copied has no    field skipped: no write, base for
                               mapping row                              the field left as it was; reported
                                                                        in Plan.unmapped
=============================  =======================================  ======================================

Why these rules:

* "Changed" means "differs from the last agreed value of the same side", never "a timestamp
  moved" (Unison, "What is an update?"). A field that changed on neither side is never written.
* Equivalence is checked before copying, so a lossy map cannot flip-flop: with base
  ``(Low, "3")`` and Sentinel moved to Informational, ServiceNow already says ``3``; the base
  becomes ``(Informational, "3")`` and the next cycle sees nothing to do.
* ``both_changed_agree`` is also how an interrupted run heals: when the remote write succeeded but
  the shadow was not saved, the next cycle sees both sides changed and equal, and only records it.
* Conflict policy ``newest`` compares the two sides' ``modified`` times: the one documented
  exception to "never compare the two clocks". Ties go to Sentinel. ``sentinel`` and
  ``servicenow`` always pick that side.
* Unassigned is a value like any other: the owner tables must carry the row ``"" -> ""`` when
  clearing the owner is meant to sync; without it an unassignment is reported as unmapped.
* All changed fields of one side land in one mapping, so the engine makes one write per record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

FIELDS: tuple[str, ...] = ("severity", "status", "owner")
"""The synced fields. Values are strings in each side's own terms (see the module docstring)."""

CONFLICT_POLICIES: tuple[str, ...] = ("newest", "sentinel", "servicenow")

SENTINEL = "sentinel"
SERVICENOW = "servicenow"

_EMPTY: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class SideState:
    """One side's current values (field -> value, that side's terms) and last-modified time.

    ``modified`` is only consulted by the ``newest`` conflict policy. A field missing from
    ``values`` is read as ``""``.
    """

    values: Mapping[str, str]
    modified: datetime


@dataclass(frozen=True, slots=True)
class Policy:
    """The mapping tables per field and the conflict policy (``newest``, ``sentinel`` or ``servicenow``)."""

    to_snow: Mapping[str, Mapping[str, str]]
    to_sentinel: Mapping[str, Mapping[str, str]]
    conflict: str = "newest"

    def __post_init__(self) -> None:
        if self.conflict not in CONFLICT_POLICIES:
            choices = ", ".join(CONFLICT_POLICIES)
            raise ValueError(f"conflict policy must be one of {choices}: {self.conflict!r}")


@dataclass(frozen=True, slots=True)
class FieldConflict:
    """Both sides changed a field to values of different meaning; ``winner`` is the side kept."""

    field: str
    sentinel: str
    servicenow: str
    winner: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What to write where, and the base to store *after* the writes succeed.

    ``to_sentinel``/``to_snow`` hold the new values in the target side's terms (empty: no write).
    ``base`` is the complete new base, including fields of the input base that were not planned.
    ``unmapped`` lists ``(field, side the value is on, value)`` for skipped fields.
    """

    to_sentinel: Mapping[str, str]
    to_snow: Mapping[str, str]
    base: Mapping[str, tuple[str, str]]
    conflicts: tuple[FieldConflict, ...]
    unmapped: tuple[tuple[str, str, str], ...]
    cases: Mapping[str, str]
    previous_base: Mapping[str, tuple[str, str]] = field(default_factory=dict, repr=False)

    @property
    def writes(self) -> bool:
        """True when at least one side must be written."""
        return bool(self.to_sentinel or self.to_snow)

    @property
    def base_changed(self) -> bool:
        """True when ``base`` differs from the input base: persist it even if nothing is written."""
        return dict(self.base) != dict(self.previous_base)


@dataclass(frozen=True, slots=True)
class _Decision:
    case: str
    to_sentinel: str | None = None
    to_snow: str | None = None
    base: tuple[str, str] | None = None
    conflict: FieldConflict | None = None
    unmapped: tuple[str, str, str] | None = None


def plan(
    base: Mapping[str, tuple[str, str]] | None,
    sentinel: SideState,
    snow: SideState,
    policy: Policy,
    fields: Sequence[str] = FIELDS,
) -> Plan:
    """Decide, field by field, what to write to each side (see the decision table above)."""
    previous = dict(base or {})
    new_base = dict(previous)
    to_sentinel: dict[str, str] = {}
    to_snow: dict[str, str] = {}
    conflicts: list[FieldConflict] = []
    unmapped: list[tuple[str, str, str]] = []
    cases: dict[str, str] = {}
    for f in fields:
        d = _decide(f, previous.get(f), sentinel, snow, policy)
        cases[f] = d.case
        if d.to_sentinel is not None:
            to_sentinel[f] = d.to_sentinel
        if d.to_snow is not None:
            to_snow[f] = d.to_snow
        if d.base is not None:
            new_base[f] = d.base
        if d.conflict is not None:
            conflicts.append(d.conflict)
        if d.unmapped is not None:
            unmapped.append(d.unmapped)
    return Plan(
        to_sentinel=to_sentinel,
        to_snow=to_snow,
        base=new_base,
        conflicts=tuple(conflicts),
        unmapped=tuple(unmapped),
        cases=cases,
        previous_base=previous,
    )


def _decide(
    f: str, pair: tuple[str, str] | None, sentinel: SideState, snow: SideState, policy: Policy
) -> _Decision:
    s = sentinel.values.get(f, "")
    n = snow.values.get(f, "")
    to_snow = policy.to_snow.get(f, _EMPTY)
    to_sentinel = policy.to_sentinel.get(f, _EMPTY)
    agree = to_snow.get(s) == n or to_sentinel.get(n) == s
    if pair is None:
        if agree:
            return _Decision("no_base_agree", base=(s, n))
        return _resolve("no_base_conflict", f, s, n, sentinel, snow, policy)
    s_changed = s != pair[0]
    n_changed = n != pair[1]
    if not s_changed and not n_changed:
        return _Decision("unchanged")
    if s_changed and n_changed:
        if agree:
            return _Decision("both_changed_agree", base=(s, n))
        return _resolve("both_changed_conflict", f, s, n, sentinel, snow, policy)
    if s_changed:
        if agree:
            return _Decision("sentinel_changed_equivalent", base=(s, n))
        return _copy_to_snow("sentinel_changed", f, s, to_snow)
    if agree:
        return _Decision("snow_changed_equivalent", base=(s, n))
    return _copy_to_sentinel("snow_changed", f, n, to_sentinel)


def _resolve(
    case: str, f: str, s: str, n: str, sentinel: SideState, snow: SideState, policy: Policy
) -> _Decision:
    winner = _winner(sentinel, snow, policy)
    if winner == SENTINEL:
        d = _copy_to_snow(case, f, s, policy.to_snow.get(f, _EMPTY))
    else:
        d = _copy_to_sentinel(case, f, n, policy.to_sentinel.get(f, _EMPTY))
    if d.unmapped is not None:
        # Nothing can be resolved without a mapping row, so no conflict is claimed as settled.
        return d
    return _Decision(
        case,
        to_sentinel=d.to_sentinel,
        to_snow=d.to_snow,
        base=d.base,
        conflict=FieldConflict(field=f, sentinel=s, servicenow=n, winner=winner),
    )


def _winner(sentinel: SideState, snow: SideState, policy: Policy) -> str:
    if policy.conflict == SENTINEL:
        return SENTINEL
    if policy.conflict == SERVICENOW:
        return SERVICENOW
    # "newest": the one place the two clocks are compared; a tie keeps Sentinel's value.
    return SERVICENOW if snow.modified > sentinel.modified else SENTINEL


def _copy_to_snow(case: str, f: str, s: str, table: Mapping[str, str]) -> _Decision:
    mapped = table.get(s)
    if mapped is None:
        return _Decision("unmapped", unmapped=(f, SENTINEL, s))
    return _Decision(case, to_snow=mapped, base=(s, mapped))


def _copy_to_sentinel(case: str, f: str, n: str, table: Mapping[str, str]) -> _Decision:
    mapped = table.get(n)
    if mapped is None:
        return _Decision("unmapped", unmapped=(f, SERVICENOW, n))
    return _Decision(case, to_sentinel=mapped, base=(mapped, n))
