"""The Graph connector's mapping, pure: Graph values in Sentinel's vocabulary and back (GRAPH.md
B.2, B.3, D.3, H.4), close notes, the ticket's description and the alert/evidence lines (F)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.connectors.graph import mapping, notes
from agent.connectors.graph.models import PAIRS, parse_alert, parse_incident, valid_pair

BASE: dict[str, Any] = {
    "id": "29", "status": "active", "severity": "high", "createdDateTime": "2026-01-22T12:09:23.1433333Z",
    "lastUpdateDateTime": "2026-02-25T16:29:33.1Z", "classification": "unknown", "determination": "unknown",
    "assignedTo": None, "customTags": [], "comments": [], "resolvingComment": None,
    "incidentWebUrl": "https://security.microsoft.com/incident2/29/overview?tid=t", "displayName": "x",
}  # fmt: skip


def incident(**props: Any) -> Any:
    return parse_incident(BASE | props)


@pytest.mark.parametrize(
    ("graph", "view"),
    [("informational", "Informational"), ("low", "Low"), ("medium", "Medium"), ("high", "High"),
     ("unknown", "unknown"), ("critical", "critical")],
)  # fmt: skip
def test_severity_reads_in_sentinel_terms_and_unknown_values_pass(graph: str, view: str) -> None:
    assert mapping.severity_view(graph) == view
    assert mapping.severity_wire(view) == (graph if graph in mapping.SEVERITY_VIEW else None)


@pytest.mark.parametrize(
    ("graph", "view"),
    [("active", "New"), ("inProgress", "Active"), ("resolved", "Closed"), ("redirected", "Closed"),
     ("awaitingAction", "Active"), ("someNewStatus", "someNewStatus")],
)  # fmt: skip
def test_status_reads_in_sentinel_terms(graph: str, view: str) -> None:
    assert mapping.status_view(graph) == view


def test_status_is_written_as_active_in_progress_resolved_never_redirected() -> None:
    # D.3: only active, inProgress and resolved are real incident states.
    assert {v: mapping.status_wire(v) for v in ("New", "Active", "Closed")} == {
        "New": "active", "Active": "inProgress", "Closed": "resolved",
    }  # fmt: skip
    assert "redirected" not in mapping.STATUS_WIRE.values()
    assert mapping.status_wire("awaitingAction") is None


@pytest.mark.parametrize(
    ("classification", "view"),
    [("truePositive", "TruePositive"), ("falsePositive", "FalsePositive"),
     ("informationalExpectedActivity", "BenignPositive"), ("unknown", "Undetermined"),
     (None, "Undetermined"), ("unknownFutureValue", "Undetermined")],
)  # fmt: skip
def test_h4_classification_closes_as_the_sentinel_classification(
    classification: str | None, view: str
) -> None:
    assert mapping.classification_view(classification) == view


def test_owner_is_free_text_compared_lower_cased() -> None:
    assert mapping.owner_key(" Alice@Contoso.example ") == "alice@contoso.example"
    assert mapping.owner_key(None) == mapping.owner_key("") == ""
    got = mapping.values_view(incident(assignedTo="Bob@Contoso.example", status="inProgress"))
    assert got == {"severity": "High", "status": "Active", "owner": "bob@contoso.example"}


def test_closure_from_closure_to_defender_wins_with_its_catch_all() -> None:
    to_defender = {"Solved (Permanently)": ("truePositive", "malware"), "*": ("falsePositive", "other")}
    got = mapping.closure_for("Solved (Permanently)", "notes", to_defender, "BenignPositive")
    assert (got.classification, got.determination, got.comment) == ("truePositive", "malware", "notes")
    assert (
        mapping.closure_for("Other code", "", to_defender, "TruePositive").classification == "falsePositive"
    )


@pytest.mark.parametrize(
    ("sentinel", "graph"),
    [("TruePositive", ("truePositive", "other")), ("FalsePositive", ("falsePositive", "other")),
     ("BenignPositive", ("informationalExpectedActivity", "other")), ("Undetermined", ("unknown", "unknown")),
     ("SomethingNew", ("unknown", "unknown"))],
)  # fmt: skip
def test_h4_without_closure_to_defender_the_sentinel_row_maps_with_determination_other(
    sentinel: str, graph: tuple[str, str]
) -> None:
    got = mapping.closure_for("code", "n", {}, sentinel)
    assert (got.classification, got.determination) == graph
    assert valid_pair(*graph)  # B.3: every pair the fallback makes is one Graph accepts


def test_d3_closing_sends_status_classification_determination_and_comment_together() -> None:
    body = mapping.closure_body(mapping.GraphClosure("truePositive", "phishing", "Closed in ServiceNow"))
    assert body == {
        "status": "resolved", "classification": "truePositive", "determination": "phishing",
        "resolvingComment": "Closed in ServiceNow",
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"'malware' does not go with classification 'falsePositive'"):
        mapping.closure_body(mapping.GraphClosure("falsePositive", "malware", ""))


def test_b3_config_pairs_are_validated_and_spelled_as_graph_does() -> None:
    assert mapping.parse_defender_closure("TruePositive/MultiStagedAttack") == (
        "truePositive", "multiStagedAttack",
    )  # fmt: skip
    assert mapping.parse_defender_closure("unknown") == ("unknown", "unknown")
    for c, dets in PAIRS.items():
        for d in dets:
            assert mapping.parse_defender_closure(f"{c}/{d}") == (c, d)
    with pytest.raises(ValueError, match=r"'malware' does not go with falsePositive \(GRAPH.md B.3\)"):
        mapping.parse_defender_closure("falsePositive/malware")
    with pytest.raises(ValueError, match="truePositive needs a determination"):
        mapping.parse_defender_closure("truePositive")
    with pytest.raises(ValueError, match="'benignPositive' is not a Graph classification"):
        mapping.parse_defender_closure("benignPositive/other")  # B.2: the old name
    with pytest.raises(ValueError, match="'compromisedUser' does not go with truePositive"):
        mapping.parse_defender_closure("truePositive/compromisedUser")  # B.2: docs-only name


def test_close_notes_say_how_defender_resolved_it() -> None:
    auto = incident(status="resolved", resolvingComment="Incident automatically resolved as all alerts ...")
    assert mapping.close_notes(auto) == (
        "Resolved in Microsoft Defender XDR (classification not set): Incident automatically resolved as "
        "all alerts ..."
    )
    tp = incident(status="resolved", classification="truePositive", determination="phishing")
    assert mapping.close_notes(tp) == "Resolved in Microsoft Defender XDR as truePositive/phishing"
    merged = incident(status="redirected", redirectIncidentId="31")
    assert mapping.close_notes(merged) == "Merged in Microsoft Defender XDR into incident 31"


def test_description_carries_the_incident_web_url() -> None:
    text = notes.description(incident(description="Mail with a bad link", summary=None))
    assert text == (
        "Mail with a bad link\n\nMicrosoft Defender XDR incident 29: "
        "https://security.microsoft.com/incident2/29/overview?tid=t"
    )
    assert "sent no link" in notes.description(incident(incidentWebUrl=None))


def test_f_alert_and_evidence_lines_each_entity_once_unknown_kinds_tolerated() -> None:
    user = {
        "@odata.type": "#microsoft.graph.security.userEvidence",
        "verdict": "suspicious",
        "roles": ["compromised"],
        "userAccount": {"userPrincipalName": "alice@contoso.example"},
    }
    odd = {"@odata.type": "#microsoft.graph.security.kubernetesPodEvidence", "displayName": "pod-7"}
    nameless = {"@odata.type": "#microsoft.graph.security.blobEvidence"}
    alerts = [
        parse_alert({"id": "da1", "title": "Phish", "severity": "high", "status": "new",
                     "productName": "Microsoft Defender for Office 365", "category": "InitialAccess",
                     "mitreTechniques": ["T1566"], "alertWebUrl": "https://s/alerts/da1",
                     "evidence": [user, odd, nameless]}),
        parse_alert({"id": "da2", "title": "Sign-in", "severity": "medium", "status": "resolved",
                     "serviceSource": "microsoftSentinel", "evidence": [user]}),
        parse_alert({"id": "da1", "title": "Phish", "severity": "high", "status": "new"}),
    ]  # fmt: skip
    assert [(line.id, line.text) for line in notes.alert_lines(alerts)] == [
        (
            "da1",
            "Phish (high; Microsoft Defender for Office 365; InitialAccess T1566), new: https://s/alerts/da1",
        ),
        ("da2", "Sign-in (medium; microsoftSentinel), resolved"),
    ]
    assert [(line.id, line.text) for line in notes.evidence_lines(alerts)] == [
        (
            "userEvidence:alice@contoso.example",
            "User: alice@contoso.example (verdict suspicious; compromised)",
        ),
        ("kubernetesPodEvidence:pod-7", "Kubernetes pod: pod-7"),
    ]
