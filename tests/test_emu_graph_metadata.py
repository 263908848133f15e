"""The Graph emulator's incident, alert and comment shapes against the published Graph metadata.

The type tables below are the ``microsoft.graph.security`` entity and complex types, and the enum
members, of ``schemas/v1.0-Prod.csdl`` in ``microsoftgraph/msgraph-metadata`` (the snapshot of
2026-08-20, commit f54f11b6), restricted to what the emulator serves: ``incident``, ``alert``
(alerts v2), ``alertComment``, the evidence types it emits and their complex members. A type
``T!`` is ``Nullable="false"``; ``nav:`` is a navigation property (present only when expanded);
``graph.entity`` contributes the key ``id``. Set ``GRAPH_CSDL`` to a copy of that file to check
the tables against it (:func:`test_tables_match_the_csdl_file`); without it the tables are the
reference.

The validator is strict: every declared property must be present (the service sends nulls, B.1),
no undeclared property may appear, each value must have its declared type (strings, UTC
timestamps, integers, enum members, complex types recursively, ``@odata.type`` choosing an
evidence subtype). Broken bodies must fail, so the validator is shown not to be vacuous.
"""

from __future__ import annotations

import copy
import os
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.testing.emulators.common import TLSMaterial
from agent.testing.emulators.graph_tenant import (
    ALERT_STATUSES,
    CLASSIFICATIONS,
    DETECTION_SOURCES,
    DETERMINATIONS,
    INCIDENT_STATUSES,
    REMEDIATION_STATUSES,
    SERVICE_SOURCES,
    SEVERITIES,
    device_evidence,
    ip_evidence,
    url_evidence,
    user_evidence,
)
from tests.test_emu_graph import INCIDENTS, GraphHarness

# fmt: off
CSDL_TYPES: dict[str, tuple[str | None, dict[str, str]]] = {
    "incident": (
        "graph.entity",
        {
            "assignedTo": "Edm.String",
            "classification": "alertClassification",
            "comments": "Collection(alertComment)",
            "createdDateTime": "Edm.DateTimeOffset!",
            "customTags": "Collection(Edm.String)",
            "description": "Edm.String",
            "determination": "alertDetermination",
            "displayName": "Edm.String",
            "incidentWebUrl": "Edm.String",
            "lastModifiedBy": "Edm.String",
            "lastUpdateDateTime": "Edm.DateTimeOffset!",
            "priorityScore": "Edm.Int32",
            "redirectIncidentId": "Edm.String",
            "resolvingComment": "Edm.String",
            "severity": "alertSeverity!",
            "status": "incidentStatus!",
            "summary": "Edm.String",
            "systemTags": "Collection(Edm.String)",
            "tenantId": "Edm.String",
            "alerts": "nav:Collection(alert)",
        },
    ),
    "alert": (
        "graph.entity",
        {
            "actorDisplayName": "Edm.String",
            "additionalData": "dictionary",
            "alertPolicyId": "Edm.String",
            "alertWebUrl": "Edm.String",
            "assignedTo": "Edm.String",
            "categories": "Collection(Edm.String)",
            "category": "Edm.String",
            "classification": "alertClassification",
            "comments": "Collection(alertComment)",
            "createdDateTime": "Edm.DateTimeOffset",
            "customDetails": "dictionary",
            "description": "Edm.String",
            "detectionSource": "detectionSource",
            "detectorId": "Edm.String",
            "determination": "alertDetermination",
            "evidence": "Collection(alertEvidence)",
            "firstActivityDateTime": "Edm.DateTimeOffset",
            "incidentId": "Edm.String",
            "incidentWebUrl": "Edm.String",
            "investigationState": "investigationState",
            "lastActivityDateTime": "Edm.DateTimeOffset",
            "lastUpdateDateTime": "Edm.DateTimeOffset",
            "mitreTechniques": "Collection(Edm.String)",
            "productName": "Edm.String",
            "providerAlertId": "Edm.String",
            "recommendedActions": "Edm.String",
            "resolvedDateTime": "Edm.DateTimeOffset",
            "serviceSource": "serviceSource!",
            "severity": "alertSeverity!",
            "status": "alertStatus!",
            "systemTags": "Collection(Edm.String)",
            "tenantId": "Edm.String",
            "threatDisplayName": "Edm.String",
            "threatFamilyName": "Edm.String",
            "title": "Edm.String",
        },
    ),
    "alertComment": (
        None,
        {
            "comment": "Edm.String",
            "createdByDisplayName": "Edm.String",
            "createdDateTime": "Edm.DateTimeOffset!",
        },
    ),
    "alertEvidence": (
        None,
        {
            "createdDateTime": "Edm.DateTimeOffset!",
            "detailedRoles": "Collection(Edm.String)",
            "remediationStatus": "evidenceRemediationStatus!",
            "remediationStatusDetails": "Edm.String",
            "roles": "Collection(evidenceRole)!",
            "tags": "Collection(Edm.String)",
            "verdict": "evidenceVerdict!",
        },
    ),
    "userEvidence": (
        "alertEvidence",
        {
            "stream": "stream",
            "userAccount": "userAccount",
        },
    ),
    "deviceEvidence": (
        "alertEvidence",
        {
            "azureAdDeviceId": "Edm.String",
            "defenderAvStatus": "defenderAvStatus",
            "deviceDnsName": "Edm.String",
            "dnsDomain": "Edm.String",
            "firstSeenDateTime": "Edm.DateTimeOffset",
            "healthStatus": "deviceHealthStatus",
            "hostName": "Edm.String",
            "ipInterfaces": "Collection(Edm.String)",
            "lastExternalIpAddress": "Edm.String",
            "lastIpAddress": "Edm.String",
            "loggedOnUsers": "Collection(loggedOnUser)",
            "mdeDeviceId": "Edm.String",
            "ntDomain": "Edm.String",
            "onboardingStatus": "onboardingStatus",
            "osBuild": "Edm.Int64",
            "osPlatform": "Edm.String",
            "rbacGroupId": "Edm.Int32",
            "rbacGroupName": "Edm.String",
            "resourceAccessEvents": "Collection(resourceAccessEvent)",
            "riskScore": "deviceRiskScore",
            "version": "Edm.String",
            "vmMetadata": "vmMetadata",
        },
    ),
    "ipEvidence": (
        "alertEvidence",
        {
            "countryLetterCode": "Edm.String",
            "ipAddress": "Edm.String",
            "location": "geoLocation",
            "stream": "stream",
        },
    ),
    "urlEvidence": (
        "alertEvidence",
        {
            "url": "Edm.String",
        },
    ),
    "userAccount": (
        None,
        {
            "accountName": "Edm.String",
            "activeDirectoryObjectGuid": "Edm.Guid",
            "azureAdUserId": "Edm.String",
            "displayName": "Edm.String",
            "domainName": "Edm.String",
            "resourceAccessEvents": "Collection(resourceAccessEvent)",
            "tenantId": "Edm.String",
            "userPrincipalName": "Edm.String",
            "userSid": "Edm.String",
        },
    ),
    "geoLocation": (
        None,
        {
            "city": "Edm.String",
            "countryName": "Edm.String",
            "latitude": "Edm.Double",
            "longitude": "Edm.Double",
            "state": "Edm.String",
        },
    ),
    "loggedOnUser": (
        None,
        {
            "accountName": "Edm.String",
            "domainName": "Edm.String",
        },
    ),
    "stream": (
        None,
        {
            "name": "Edm.String",
        },
    ),
    "vmMetadata": (
        None,
        {
            "cloudProvider": "vmCloudProvider!",
            "resourceId": "Edm.String",
            "subscriptionId": "Edm.String",
            "vmId": "Edm.String",
        },
    ),
    "resourceAccessEvent": (
        None,
        {
            "accessDateTime": "Edm.DateTimeOffset",
            "accountId": "Edm.String",
            "ipAddress": "Edm.String",
            "resourceIdentifier": "Edm.String",
        },
    ),
    "dictionary": (
        None,
        {},
    ),
}
CSDL_ENUMS: dict[str, tuple[str, ...]] = {
    "incidentStatus": (
        "active", "resolved", "inProgress", "redirected", "unknownFutureValue", "awaitingAction",
    ),
    "alertSeverity": (
        "unknown", "informational", "low", "medium", "high", "unknownFutureValue",
    ),
    "alertClassification": (
        "unknown", "falsePositive", "truePositive", "informationalExpectedActivity",
        "unknownFutureValue",
    ),
    "alertDetermination": (
        "unknown", "apt", "malware", "securityPersonnel", "securityTesting", "unwantedSoftware",
        "other", "multiStagedAttack", "compromisedAccount", "phishing", "maliciousUserActivity",
        "notMalicious", "notEnoughDataToValidate", "confirmedActivity", "lineOfBusinessApplication",
        "unknownFutureValue",
    ),
    "alertStatus": (
        "unknown", "new", "inProgress", "resolved", "unknownFutureValue",
    ),
    "serviceSource": (
        "unknown", "microsoftDefenderForEndpoint", "microsoftDefenderForIdentity",
        "microsoftDefenderForCloudApps", "microsoftDefenderForOffice365", "microsoft365Defender",
        "azureAdIdentityProtection", "microsoftAppGovernance", "dataLossPrevention",
        "unknownFutureValue", "microsoftDefenderForCloud", "microsoftSentinel",
        "microsoftInsiderRiskManagement", "microsoftThreatIntelligence", "microsoftSecurityForAI",
    ),
    "detectionSource": (
        "unknown", "microsoftDefenderForEndpoint", "antivirus", "smartScreen", "customTi",
        "microsoftDefenderForOffice365", "automatedInvestigation", "microsoftThreatExperts",
        "customDetection", "microsoftDefenderForIdentity", "cloudAppSecurity", "microsoft365Defender",
        "azureAdIdentityProtection", "manual", "microsoftDataLossPrevention", "appGovernancePolicy",
        "appGovernanceDetection", "unknownFutureValue", "microsoftDefenderForCloud",
        "microsoftDefenderForIoT", "microsoftDefenderForServers", "microsoftDefenderForStorage",
        "microsoftDefenderForDNS", "microsoftDefenderForDatabases", "microsoftDefenderForContainers",
        "microsoftDefenderForNetwork", "microsoftDefenderForAppService", "microsoftDefenderForKeyVault",
        "microsoftDefenderForResourceManager", "microsoftDefenderForApiManagement", "nrtAlerts",
        "scheduledAlerts", "microsoftDefenderThreatIntelligenceAnalytics", "builtInMl",
        "microsoftInsiderRiskManagement", "microsoftThreatIntelligence",
        "microsoftDefenderForAIServices", "securityCopilot", "microsoftSentinel",
    ),
    "investigationState": (
        "unknown", "terminated", "successfullyRemediated", "benign", "failed", "partiallyRemediated",
        "running", "pendingApproval", "pendingResource", "queued", "innerFailure", "preexistingAlert",
        "unsupportedOs", "unsupportedAlertType", "suppressedAlert", "partiallyInvestigated",
        "terminatedByUser", "terminatedBySystem", "unknownFutureValue",
    ),
    "evidenceRemediationStatus": (
        "none", "remediated", "prevented", "blocked", "notFound", "unknownFutureValue", "active",
        "pendingApproval", "declined", "unremediated", "running", "partiallyRemediated",
    ),
    "evidenceVerdict": (
        "unknown", "suspicious", "malicious", "noThreatsFound", "unknownFutureValue",
    ),
    "evidenceRole": (
        "unknown", "contextual", "scanned", "source", "destination", "created", "added", "compromised",
        "edited", "attacked", "attacker", "commandAndControl", "loaded", "suspicious", "policyViolator",
        "unknownFutureValue",
    ),
    "defenderAvStatus": (
        "notReporting", "disabled", "notUpdated", "updated", "unknown", "notSupported",
        "unknownFutureValue",
    ),
    "deviceHealthStatus": (
        "active", "inactive", "impairedCommunication", "noSensorData",
        "noSensorDataImpairedCommunication", "unknown", "unknownFutureValue",
    ),
    "onboardingStatus": (
        "insufficientInfo", "onboarded", "canBeOnboarded", "unsupported", "unknownFutureValue",
    ),
    "deviceRiskScore": (
        "none", "informational", "low", "medium", "high", "unknownFutureValue",
    ),
    "vmCloudProvider": (
        "unknown", "azure", "unknownFutureValue",
    ),
}
# fmt: on

_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?Z\Z")
_COLLECTION = re.compile(r"Collection\((.+)\)\Z")


def _properties(type_name: str) -> dict[str, str]:
    base, props = CSDL_TYPES[type_name]
    inherited = {"id": "Edm.String!"} if base == "graph.entity" else _properties(base) if base else {}
    return inherited | props


def problems(value: Any, type_name: str, where: str = "$", *, expanded: bool = False) -> list[str]:
    """Every way ``value`` differs from the CSDL type ``type_name`` (an entity or complex type)."""
    if type_name == "dictionary":  # an open type: any object
        return [] if isinstance(value, dict) else [f"{where}: expected an object"]
    if not isinstance(value, dict):
        return [f"{where}: expected an object of {type_name}"]
    kind = value.get("@odata.type")
    if type_name == "alertEvidence":
        sub = str(kind or "").removeprefix("#microsoft.graph.security.")
        if sub not in CSDL_TYPES or CSDL_TYPES[sub][0] != "alertEvidence":
            return [f"{where}: @odata.type {kind!r} is not an alertEvidence subtype"]
        type_name = sub
    props = _properties(type_name)
    found: list[str] = []
    for key in value:
        if key.startswith("@odata."):
            continue
        if key not in props:
            found.append(f"{where}.{key}: not a property of {type_name}")
    for key, declared in props.items():
        if declared.startswith("nav:"):
            if expanded and key not in value:
                found.append(f"{where}.{key}: missing although expanded")
            if key in value:
                found += _check(value[key], declared[4:], f"{where}.{key}")
            continue
        if key not in value:
            found.append(f"{where}.{key}: missing (the service sends every property, nulls included)")
            continue
        found += _check(value[key], declared, f"{where}.{key}")
    return found


def _check(value: Any, declared: str, where: str) -> list[str]:
    nullable = not declared.endswith("!")
    declared = declared.rstrip("!")
    collection = _COLLECTION.match(declared)
    if collection:
        if not isinstance(value, list):
            return [f"{where}: a collection is never null, expected a list"]
        return [
            p
            for i, item in enumerate(value)
            for p in _check(item, collection.group(1) + "!", f"{where}[{i}]")
        ]
    if value is None:
        return [] if nullable else [f"{where}: null in a non-nullable property"]
    if declared in CSDL_ENUMS:
        ok = isinstance(value, str) and value in CSDL_ENUMS[declared]
        return [] if ok else [f"{where}: {value!r} is not a member of {declared}"]
    if declared in CSDL_TYPES:
        return problems(value, declared, where)
    return [] if _primitive(value, declared) else [f"{where}: {value!r} is not {declared}"]


def _primitive(value: Any, declared: str) -> bool:
    if declared == "Edm.String":
        return isinstance(value, str)
    if declared == "Edm.DateTimeOffset":
        return isinstance(value, str) and _TIMESTAMP.match(value) is not None
    if declared in ("Edm.Int32", "Edm.Int64"):
        limit = 2**31 if declared == "Edm.Int32" else 2**63
        return isinstance(value, int) and not isinstance(value, bool) and -limit <= value < limit
    if declared == "Edm.Double":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if declared == "Edm.Guid":
        try:
            uuid.UUID(str(value))
        except ValueError:
            return False
        return isinstance(value, str)
    if declared == "Edm.Boolean":
        return isinstance(value, bool)
    raise AssertionError(f"no check for {declared}")


def assert_valid(value: Any, type_name: str, *, expanded: bool = False) -> None:
    found = problems(value, type_name, expanded=expanded)
    assert not found, f"{type_name}: " + "; ".join(found[:10])


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    return TLSMaterial(tmp_path_factory.mktemp("graph-metadata-tls"))


@pytest.fixture
async def h(tls: TLSMaterial) -> AsyncIterator[GraphHarness]:
    async with GraphHarness(tls) as harness:
        yield harness


def _every_evidence(h: GraphHarness) -> list[dict[str, Any]]:
    now = h.t.now()
    return [
        user_evidence(now, "alice@contoso.example", "Alice Analyst"),
        device_evidence(now, "ws-0042", remediation="running"),
        ip_evidence(now, "198.51.100.7"),
        url_evidence(now, "https://phish.example/login"),
    ]


# --- the emulator's bodies against the metadata ---------------------------------------------------


@pytest.mark.parametrize("prefer", [True, False])
async def test_incident_alert_and_evidence_bodies_match_the_metadata(h: GraphHarness, prefer: bool) -> None:
    inc = h.t.create_incident(
        alerts=[{"evidence": _every_evidence(h)}, {"service_source": "microsoftSentinel",
                                                   "detection_source": "nrtAlerts"}],
        custom_tags=["snow"], priority_score=None,
    )  # fmt: skip
    h.t.analyst_comment(inc["id"], "looked at it")
    h.t.set_awaiting_action(inc["id"])
    one = await h.call("GET", f"{INCIDENTS}/{inc['id']}", params={"$expand": "alerts"}, prefer=prefer)
    assert_valid(one.body, "incident", expanded=True)
    listed = await h.call("GET", INCIDENTS, prefer=prefer)
    for item in listed.body["value"]:
        assert_valid(item, "incident")
    alerts = await h.call("GET", "/v1.0/security/alerts_v2", prefer=prefer)
    assert len(alerts.body["value"]) == 2
    for alert in alerts.body["value"]:
        assert_valid(alert, "alert")
    kinds = {e["@odata.type"] for a in alerts.body["value"] for e in a["evidence"]}
    emitted = ("userEvidence", "deviceEvidence", "ipEvidence", "urlEvidence")
    assert kinds == {f"#microsoft.graph.security.{k}" for k in emitted}


async def test_written_incident_and_comment_echo_match_the_metadata(h: GraphHarness) -> None:
    inc = h.t.create_incident()
    patched = await h.call(
        "PATCH", f"{INCIDENTS}/{inc['id']}",
        json={"status": "resolved", "classification": "falsePositive", "determination": "notMalicious",
              "resolvingComment": "tested", "customTags": ["a", "b"], "assignedTo": "bob@contoso.example"},
    )  # fmt: skip
    assert patched.status == 200
    assert_valid(patched.body, "incident")
    echo = await h.call("POST", f"{INCIDENTS}/{inc['id']}/comments", json={"comment": "done"})
    for comment in echo.body["value"]:
        assert_valid(comment, "alertComment")
    assert_valid(h.t.alerts_for(inc["id"])[0], "alert")  # resolved alert: resolvedDateTime set


def test_emulator_enums_are_the_metadata_enums() -> None:
    assert INCIDENT_STATUSES == CSDL_ENUMS["incidentStatus"]
    assert SEVERITIES == CSDL_ENUMS["alertSeverity"]
    assert CLASSIFICATIONS == CSDL_ENUMS["alertClassification"]
    assert DETERMINATIONS == CSDL_ENUMS["alertDetermination"]
    assert ALERT_STATUSES == CSDL_ENUMS["alertStatus"]
    assert SERVICE_SOURCES == CSDL_ENUMS["serviceSource"]
    assert DETECTION_SOURCES == CSDL_ENUMS["detectionSource"]
    assert REMEDIATION_STATUSES == CSDL_ENUMS["evidenceRemediationStatus"]


# --- the validator is not vacuous ----------------------------------------------------------------


def _breakages() -> list[tuple[str, Any]]:
    def drop(key: str) -> Any:
        return lambda b: {k: v for k, v in b.items() if k != key}

    return [
        ("missing property", drop("summary")),
        ("extra property", lambda b: b | {"title": "x"}),
        ("null status", lambda b: b | {"status": None}),
        ("number id", lambda b: b | {"id": 29}),
        ("bad enum", lambda b: b | {"classification": "benignPositive"}),
        ("PascalCase enum", lambda b: b | {"severity": "High"}),
        ("local time", lambda b: b | {"createdDateTime": "2026-01-22T12:09:23.1433333"}),
        ("8 digits", lambda b: b | {"createdDateTime": "2026-01-22T12:09:23.14333333Z"}),
        ("null collection", lambda b: b | {"customTags": None}),
        ("string score", lambda b: b | {"priorityScore": "100"}),
        ("comment with id", lambda b: b | {"comments": [{"id": "1", "comment": "x",
                                                         "createdByDisplayName": None,
                                                         "createdDateTime": "2026-01-22T12:09:23Z"}]}),
        ("old comment keys", lambda b: b | {"comments": [{"comment": "x", "createdBy": "a",
                                                          "createdTime": "2026-01-22T12:09:23Z"}]}),
    ]  # fmt: skip


async def test_broken_bodies_fail_the_validator(h: GraphHarness) -> None:
    inc = h.t.create_incident()
    good = (await h.call("GET", f"{INCIDENTS}/{inc['id']}")).body
    assert_valid(good, "incident")
    for why, breaking in _breakages():
        assert problems(breaking(copy.deepcopy(good)), "incident"), why
    alert = h.t.alerts_for(inc["id"])[0]
    assert problems(alert | {"evidence": [{"@odata.type": "#microsoft.graph.security.fooEvidence"}]}, "alert")
    bad_osbuild = copy.deepcopy(alert)
    bad_osbuild["evidence"][0]["osBuild"] = "22631"
    assert problems(bad_osbuild, "alert")
    assert problems(alert | {"serviceSource": None}, "alert")


def test_the_docs_example_body_validates() -> None:
    # The example GET body of GRAPH.md B.5 (placeholders replaced by values of their type).
    example = {
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#security/incidents/$entity",
        "id": "29", "tenantId": str(uuid.uuid4()), "status": "active", "severity": "high",
        "incidentWebUrl": "https://security.microsoft.com/incident2/29/overview?tid=x",
        "redirectIncidentId": None,
        "displayName": "Multi-stage incident involving Execution on one endpoint",
        "createdDateTime": "2026-01-22T12:09:23.1433333Z", "lastUpdateDateTime": "2026-02-25T16:29:33.1Z",
        "assignedTo": "analyst@contoso.example", "classification": "truePositive",
        "determination": "multiStagedAttack", "customTags": ["Demo"], "systemTags": [], "description": None,
        "lastModifiedBy": "API-App:x", "resolvingComment": None, "summary": None, "priorityScore": 100,
        "comments": [{"comment": "text", "createdByDisplayName": "API-App:x",
                      "createdDateTime": "2026-02-25T16:29:30.5Z"}],
    }  # fmt: skip
    assert_valid(example, "incident")


# --- the tables against the metadata file ------------------------------------------------------------

_EDM = "{http://docs.oasis-open.org/odata/ns/edm}"


def tables_from_csdl(
    path: Path,
) -> tuple[dict[str, tuple[str | None, dict[str, str]]], dict[str, tuple[str, ...]]]:
    """The same tables, read from a CSDL file (``microsoft.graph.security`` namespace)."""

    def short(name: str) -> str:
        return name.replace("self.", "").replace("microsoft.graph.security.", "")

    root = ET.parse(path).getroot()
    schema = next(s for s in root.iter(f"{_EDM}Schema") if s.get("Namespace") == "microsoft.graph.security")
    types: dict[str, tuple[str | None, dict[str, str]]] = {}
    enums: dict[str, tuple[str, ...]] = {}
    for element in schema:
        name = str(element.get("Name"))
        if element.tag in (f"{_EDM}EntityType", f"{_EDM}ComplexType") and name in CSDL_TYPES:
            props: dict[str, str] = {}
            for prop in element:
                kind = short(str(prop.get("Type")))
                if prop.tag == f"{_EDM}Property":
                    props[str(prop.get("Name"))] = kind + ("!" if prop.get("Nullable") == "false" else "")
                elif prop.tag == f"{_EDM}NavigationProperty":
                    props[str(prop.get("Name"))] = f"nav:{kind}"
            base = element.get("BaseType")
            types[name] = (short(base) if base else None, props)
        elif element.tag == f"{_EDM}EnumType" and name in CSDL_ENUMS:
            enums[name] = tuple(str(m.get("Name")) for m in element if m.tag == f"{_EDM}Member")
    return types, enums


@pytest.mark.skipif(not os.environ.get("GRAPH_CSDL"), reason="GRAPH_CSDL names no copy of v1.0-Prod.csdl")
def test_tables_match_the_csdl_file() -> None:
    types, enums = tables_from_csdl(Path(os.environ["GRAPH_CSDL"]))
    assert types == CSDL_TYPES
    assert enums == CSDL_ENUMS
