"""Contract tests: the Sentinel emulator's bodies validate against Microsoft's own OpenAPI files.

The Swagger 2.0 files are read at test time from ``shared/api/sentinel-openapi`` next to the
repository (REFERENCE "Main sources"); every test here fails when they are missing. Swagger
schemas are JSON Schema Draft 4 plus a few extensions, so the validator adds what Azure's
tooling does on top of plain Draft 4:

* relative ``$ref``s across files, with the 2025-09-01 ``IncidentTypes.json``/``AlertTypes.json``
  mapped to their 2025-06-01/2025-03-01 stand-ins (the folder's README);
* ``discriminator``: an ``Entity`` is also checked against the subtype whose
  ``x-ms-discriminator-value`` equals its ``kind``;
* a property that is not ``required`` may be ``null`` unless it says ``x-nullable: false`` (an
  unassigned owner is all nulls, A.6);
* properties the model does not define are rejected (``strict``), except on free-form objects
  (no ``properties``) or where ``additionalProperties`` is declared;
* formats ``date-time``, ``uuid`` and ``int32`` are checked.

The spec's own examples must pass and deliberately broken bodies must fail, so the validator
is shown to be neither vacuous nor wrong.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin

import jsonschema
import pytest
from jsonschema import Draft4Validator, FormatChecker, validators
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from agent.testing.emulators.common import TLSMaterial
from agent.testing.emulators.odata import parse_instant
from tests.sentinel_spec import SPEC_ROOT, STABLE, needs_spec
from tests.test_emu_sentinel import SentinelHarness, full_body

pytestmark = needs_spec

INCIDENTS = STABLE / "2025-09-01" / "Incidents.json"
COMMON_TYPES = SPEC_ROOT / "securityinsights" / "resource-manager" / "common" / "2.0" / "types.json"
# The README of the spec folder: these two 2025-09-01 files were not copied; the nearest stable
# versions stand in for them.
STAND_INS = {
    STABLE / "2025-09-01" / "common" / "IncidentTypes.json": STABLE
    / "2025-06-01"
    / "common"
    / "IncidentTypes.json",
    STABLE / "2025-09-01" / "common" / "AlertTypes.json": STABLE
    / "2025-03-01"
    / "common"
    / "AlertTypes.json",
}
EXAMPLE_FALLBACKS = (STABLE / "2025-06-01", STABLE / "2025-03-01")
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
DATE_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)\Z", re.IGNORECASE)


class SpecValidator:
    """Validates bodies against definitions of the Sentinel Swagger files."""

    def __init__(self) -> None:
        resources = []
        self.subtypes: dict[int, dict[str, str]] = {}  # id(base schema) -> kind -> subtype URI
        for path in SPEC_ROOT.rglob("*.json"):
            if "examples" in path.parts:
                continue
            resources.append((path.as_uri(), self._load(path)))
        for missing, stand_in in STAND_INS.items():
            resources.append((missing.as_uri(), self._load(stand_in)))
        self.registry: Registry[Any] = Registry().with_resources(resources)
        self.format_checker = _format_checker()
        self.cls = validators.extend(
            Draft4Validator, {"properties": _nullable_properties, "discriminator": self._discriminator}
        )

    def _load(self, path: Path) -> Resource[Any]:
        doc = json.loads(path.read_text())
        definitions = doc.get("definitions", {})
        for name, schema in definitions.items():
            value = schema.get("x-ms-discriminator-value")
            for parent in schema.get("allOf", []):
                ref = parent.get("$ref", "")
                if value and ref.startswith("#/definitions/"):
                    base = definitions[ref.split("/")[-1]]
                    self.subtypes.setdefault(id(base), {})[value] = f"{path.as_uri()}#/definitions/{name}"
        return Resource.from_contents(doc, default_specification=DRAFT4)

    def _discriminator(
        self, validator: Any, prop: str, instance: Any, schema: dict[str, Any]
    ) -> Iterator[jsonschema.ValidationError]:
        if not isinstance(instance, dict):
            return
        subtype = self.subtypes.get(id(schema), {}).get(str(instance.get(prop)))
        if subtype is None:
            return  # an unknown kind is reported by the enum of the kind property
        own = self.registry.resolver().lookup(subtype).contents
        # The subtype's own part only: its allOf leads back to this base.
        part = {
            "properties": {k: {"$ref": f"{subtype}/properties/{k}"} for k in own.get("properties", {})},
            "required": own.get("required", []),
        }
        if not part["required"]:
            del part["required"]
        yield from validator.descend(instance, part)

    def definition_uri(self, name: str, doc: Path = INCIDENTS) -> str:
        return f"{doc.as_uri()}#/definitions/{name}"

    def errors(self, instance: Any, ref: str, *, strict: bool = True) -> list[str]:
        """Every problem of ``instance`` against the schema at ``ref`` (an absolute URI)."""
        validator = self.cls({"$ref": ref}, registry=self.registry, format_checker=self.format_checker)
        found = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(instance)]
        if strict:
            found += [
                f"{p}: not defined by the schema" for p in self._extras(instance, {"$ref": ref}, ref, "$")
            ]
        return found

    def check(self, instance: Any, definition: str, *, strict: bool = True) -> None:
        problems = self.errors(instance, self.definition_uri(definition), strict=strict)
        assert not problems, f"{definition}: " + "; ".join(problems[:10])

    # -- strict mode: properties the model does not define
    def _deref(self, schema: dict[str, Any], base: str) -> tuple[dict[str, Any], str]:
        while "$ref" in schema:
            target = urljoin(base, schema["$ref"])
            schema = self.registry.resolver(base).lookup(schema["$ref"]).contents
            base = urldefrag(target).url
        return schema, base

    def _collect(
        self, schema: dict[str, Any], base: str, instance: dict[str, Any], out: dict[str, tuple[Any, str]]
    ) -> bool:
        """Gather the properties of ``schema`` and its allOf/discriminator parts; return
        whether the object is free-form."""
        schema, base = self._deref(schema, base)
        open_ = "additionalProperties" in schema
        for name, sub in schema.get("properties", {}).items():
            out.setdefault(name, (sub, base))
        for part in schema.get("allOf", []):
            open_ |= self._collect(part, base, instance, out)
        if "discriminator" in schema:
            subtype = self.subtypes.get(id(schema), {}).get(str(instance.get(schema["discriminator"])))
            if subtype is not None:
                own = self.registry.resolver().lookup(subtype).contents
                for name in own.get("properties", {}):
                    out.setdefault(name, ({"$ref": f"{subtype}/properties/{name}"}, base))
        return open_

    def _extras(self, instance: Any, schema: dict[str, Any], base: str, path: str) -> list[str]:
        schema, base = self._deref(schema, base)
        if isinstance(instance, list):
            items = schema.get("items")
            if not isinstance(items, dict):
                return []
            return [p for i, x in enumerate(instance) for p in self._extras(x, items, base, f"{path}[{i}]")]
        if not isinstance(instance, dict):
            return []
        props: dict[str, tuple[Any, str]] = {}
        open_ = self._collect(schema, base, instance, props)
        found = []
        for key, value in instance.items():
            if key in props:
                found += self._extras(value, props[key][0], props[key][1], f"{path}.{key}")
            elif props and not open_:
                found.append(f"{path}.{key}")
        return found


def _nullable_properties(
    validator: Any, properties: dict[str, Any], instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    required = set(schema.get("required", []))
    for name, sub in properties.items():
        if name not in instance:
            continue
        if instance[name] is None and name not in required and sub.get("x-nullable") is not False:
            continue
        yield from validator.descend(instance[name], sub, path=name, schema_path=name)


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())

    @checker.checks("date-time")
    def date_time(value: object) -> bool:
        return not isinstance(value, str) or bool(DATE_TIME_RE.match(value))

    @checker.checks("uuid")
    def is_uuid(value: object) -> bool:
        return not isinstance(value, str) or bool(UUID_RE.match(value))

    @checker.checks("int32")
    def int32(value: object) -> bool:
        return not isinstance(value, int) or -(2**31) <= value < 2**31

    return checker


@pytest.fixture(scope="module")
def spec() -> SpecValidator:
    return SpecValidator()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSMaterial]:
    yield TLSMaterial(tmp_path_factory.mktemp("contract-tls"))


@pytest.fixture
async def h(tls: TLSMaterial) -> AsyncIterator[SentinelHarness]:
    async with SentinelHarness(tls) as harness:
        yield harness


# --- the validator itself ---------------------------------------------------------------------


def _operation_examples() -> Iterator[tuple[str, str, Path, dict[str, Any]]]:
    """(operation id, example name, example file, operation) for every example we have a copy of."""
    doc = json.loads(INCIDENTS.read_text())
    for path_item in doc["paths"].values():
        for method, operation in path_item.items():
            if method == "parameters":
                continue
            for name, ref in operation.get("x-ms-examples", {}).items():
                relative = ref["$ref"]
                candidates = [INCIDENTS.parent / relative] + [d / relative for d in EXAMPLE_FALLBACKS]
                found = next((c.resolve() for c in candidates if c.resolve().is_file()), None)
                if found is not None:
                    yield operation["operationId"], name, found, operation


def test_every_incident_comment_alert_and_entity_example_is_available() -> None:
    ops = {op for op, *_ in _operation_examples()}
    assert ops >= {
        "Incidents_List",
        "Incidents_Get",
        "Incidents_CreateOrUpdate",
        "Incidents_Delete",
        "Incidents_ListAlerts",
        "Incidents_ListEntities",
        "IncidentComments_List",
        "IncidentComments_Get",
        "IncidentComments_CreateOrUpdate",
        "IncidentComments_Delete",
    }


def test_the_specs_own_examples_validate(spec: SpecValidator) -> None:
    checked = 0
    for op, name, path, operation in _operation_examples():
        example = json.loads(path.read_text())
        for status, response in example["responses"].items():
            schema = operation["responses"].get(status, {}).get("schema")
            if "body" not in response or schema is None:
                continue
            problems = spec.errors(response["body"], urljoin(INCIDENTS.as_uri(), schema["$ref"]))
            assert not problems, (op, name, status, problems)
            checked += 1
        for param in operation.get("parameters", []):
            if "$ref" in param:
                param = spec.registry.resolver(INCIDENTS.as_uri()).lookup(param["$ref"]).contents
            if param.get("in") == "body" and param["name"] in example["parameters"]:
                body = example["parameters"][param["name"]]
                problems = spec.errors(body, urljoin(INCIDENTS.as_uri(), param["schema"]["$ref"]))
                assert not problems, (op, name, "request", problems)
                checked += 1
    assert checked >= 12


def _example(*parts: str) -> Any:
    return json.loads(STABLE.joinpath(*parts).read_text())["responses"]["200"]["body"]


@pytest.mark.parametrize(
    ("mutate", "definition"),
    [
        (lambda b: b["properties"].update(severity=7), "Incident"),
        (lambda b: b["properties"].update(severity="Critical"), "Incident"),
        (lambda b: b["properties"].update(status=None), "Incident"),
        (lambda b: b["properties"].pop("title"), "Incident"),
        (lambda b: b["properties"].update(createdTimeUtc="yesterday"), "Incident"),
        (lambda b: b["properties"]["owner"].update(objectId="not-a-guid"), "Incident"),
        (lambda b: b["properties"].update(labels=[{"labelType": "User"}]), "Incident"),
        (lambda b: b["properties"]["additionalData"].update(alertsCount="3"), "Incident"),
        (lambda b: b["properties"]["additionalData"].update(alertCount=3), "Incident"),
        (lambda b: b["properties"].update(incidentNumber=2**31), "Incident"),
        (lambda b: b.update(etag=1), "Incident"),
        (lambda b: b.update(extra=True), "Incident"),
        (lambda b: b.update(properties="x"), "Incident"),
    ],
)
def test_broken_incidents_fail(spec: SpecValidator, mutate: Any, definition: str) -> None:
    body = _example("2025-09-01", "examples", "incidents", "CreateIncident.json")
    assert spec.errors(body, spec.definition_uri(definition)) == []
    mutate(body)
    assert spec.errors(body, spec.definition_uri(definition)) != []


def test_broken_lists_comments_and_entities_fail(spec: SpecValidator) -> None:
    listing = _example("2025-03-01", "examples", "incidents", "GetIncidents.json")
    del listing["value"]
    assert spec.errors(listing, spec.definition_uri("IncidentList"))
    comments = _example("2025-09-01", "examples", "incidents", "comments", "GetAllIncidentComments.json")
    comments["value"][0]["properties"]["message"] = ["not", "a", "string"]
    assert spec.errors(comments, spec.definition_uri("IncidentCommentList"))
    comments = _example("2025-09-01", "examples", "incidents", "comments", "GetAllIncidentComments.json")
    comments["value"][0]["properties"]["author"]["objectId"] = "x"
    assert spec.errors(comments, spec.definition_uri("IncidentCommentList"))
    alerts = _example("2025-09-01", "examples", "incidents", "GetAllIncidentAlerts.json")
    alerts["value"][0]["properties"]["severity"] = "Severe"
    assert spec.errors(alerts, spec.definition_uri("IncidentAlertList"))
    entities = _example("2025-09-01", "examples", "incidents", "GetAllIncidentEntities.json")
    entities["metaData"][0].pop("count")
    assert spec.errors(entities, spec.definition_uri("IncidentEntitiesResponse"))


def test_entities_are_checked_against_their_kind(spec: SpecValidator) -> None:
    entities = _example("2025-09-01", "examples", "incidents", "GetAllIncidentEntities.json")
    ref = spec.definition_uri("IncidentEntitiesResponse")
    account = entities["entities"][0]
    account["properties"]["accountName"] = 5  # only AccountEntityProperties says it is a string
    assert any("accountName" in p or "5 is not of type" in p for p in spec.errors(entities, ref))
    account["properties"]["accountName"] = "administrator"
    account["properties"]["hostName"] = "web01"  # a Host property on an Account
    assert spec.errors(entities, ref) == ["$.entities[0].properties.hostName: not defined by the schema"]
    account["properties"].pop("hostName")
    account["kind"] = "Host"
    account["properties"] = {"friendlyName": "web01", "hostName": "web01", "osFamily": "Windows"}
    assert spec.errors(entities, ref) == []
    account["properties"]["osFamily"] = "Plan9"
    assert spec.errors(entities, ref)
    account["kind"] = "Starship"
    account["properties"] = {"friendlyName": "x"}
    assert spec.errors(entities, ref)


def test_nulls_are_accepted_only_for_optional_properties(spec: SpecValidator) -> None:
    body = _example("2025-09-01", "examples", "incidents", "CreateIncident.json")
    body["properties"]["owner"] = dict.fromkeys(
        ("objectId", "email", "assignedTo", "userPrincipalName", "ownerType")
    )
    body["properties"]["description"] = None
    assert spec.errors(body, spec.definition_uri("Incident")) == []
    body["properties"]["title"] = None
    assert spec.errors(body, spec.definition_uri("Incident"))


# --- emulator responses -----------------------------------------------------------------------


async def test_incident_get_list_and_put_bodies(h: SentinelHarness, spec: SpecValidator) -> None:
    plain = h.ws.create_incident(title="plain")
    rich = h.ws.create_incident(
        title="rich", severity="High", description="d", owner_upn="alice@contoso.com", labels=["snow", "x"]
    )
    h.ws.add_alert(rich["name"], display_name="alert", product="Microsoft Defender for Cloud")
    h.ws.analyst_comment(rich["name"], "note", author_upn="bob@contoso.com")
    for name in (plain["name"], rich["name"]):
        reply = await h.get_incident(name)
        assert reply.status == 200
        spec.check(reply.body, "Incident")
    reply = await h.call("GET", h.path("incidents"), params={"$top": "1"})
    assert "nextLink" in reply.body
    spec.check(reply.body, "IncidentList")
    reply = await h.call("GET", reply.body["nextLink"])
    spec.check(reply.body, "IncidentList")
    current = h.ws.incidents[rich["name"]]
    closed = full_body(
        current,
        status="Closed",
        classification="TruePositive",
        classificationReason="SuspiciousActivity",
        classificationComment="confirmed",
        owner={"objectId": h.bob.object_id},
    )
    reply = await h.put_incident(rich["name"], closed)
    assert reply.status == 200
    spec.check(reply.body, "Incident")
    reply = await h.put_incident(
        str(uuid.uuid4()),
        {
            "properties": {
                "title": "created",
                "severity": "Informational",
                "status": "New",
                "firstActivityTimeUtc": "2024-01-01T00:00:00Z",
                "lastActivityTimeUtc": "2024-01-01T00:05:00.1Z",
            }
        },
    )
    assert reply.status == 201
    spec.check(reply.body, "Incident")
    assert parse_instant(reply.body["properties"]["lastActivityTimeUtc"]) is not None


async def test_comment_bodies(h: SentinelHarness, spec: SpecValidator) -> None:
    inc = h.ws.create_incident(title="t")
    h.ws.analyst_comment(inc["name"], "by an analyst", author_upn="alice@contoso.com")
    path = h.path("incidents", inc["name"], "comments", str(uuid.uuid4()))
    created = await h.call("PUT", path, json={"properties": {"message": "<div>from the sync</div>"}})
    assert created.status == 201
    spec.check(created.body, "IncidentComment")
    updated = await h.call("PUT", path, json={"properties": {"message": "edited"}})
    assert updated.status == 200
    spec.check(updated.body, "IncidentComment")
    spec.check((await h.call("GET", path)).body, "IncidentComment")
    listed = await h.call("GET", h.path("incidents", inc["name"], "comments"), params={"$top": "1"})
    assert "nextLink" in listed.body
    spec.check(listed.body, "IncidentCommentList")


async def test_alert_and_entity_bodies(h: SentinelHarness, spec: SpecValidator) -> None:
    inc = h.ws.create_incident(title="t")
    h.ws.add_alert(inc["name"], display_name="one", severity="Informational")
    h.ws.add_alert(inc["name"], display_name="two", severity="High", product="Azure Security Center")
    h.ws.add_entity(
        inc["name"], kind="Account", friendly_name="admin", accountName="admin", ntDomain="CONTOSO"
    )
    h.ws.add_entity(inc["name"], kind="Host", friendly_name="web01", hostName="web01", osFamily="Linux")
    h.ws.add_entity(inc["name"], kind="Ip", friendly_name="10.0.0.1", address="10.0.0.1")
    h.ws.add_entity(inc["name"], kind="Url", friendly_name="http://x", url="http://x")
    h.ws.add_entity(inc["name"], kind="FileHash", friendly_name="h", algorithm="SHA256", hashValue="ab" * 32)
    alerts = await h.call("POST", h.path("incidents", inc["name"], "alerts"))
    assert len(alerts.body["value"]) == 2
    spec.check(alerts.body, "IncidentAlertList")
    entities = await h.call("POST", h.path("incidents", inc["name"], "entities"))
    assert len(entities.body["entities"]) == 5
    spec.check(entities.body, "IncidentEntitiesResponse")
    empty = h.ws.create_incident(title="empty")
    spec.check(
        (await h.call("POST", h.path("incidents", empty["name"], "entities"))).body,
        "IncidentEntitiesResponse",
    )


async def test_error_bodies_are_cloud_errors(h: SentinelHarness, spec: SpecValidator) -> None:
    inc = h.ws.create_incident(title="t")
    h.emu.set_role("reader", "Reader")
    h.emu.faults.once("comments.list", 503)
    h.emu.faults.once("incidents.entities", 500)
    h.emu.faults.once("incidents.alerts", 429)
    stale = full_body(inc)
    h.ws.analyst_update(inc["name"], title="moved on")
    replies = {
        "400": await h.put_incident(inc["name"], {"properties": {}}),
        "400-version": await h.call("GET", h.path("incidents"), api_version=None),
        "400-filter": await h.call("GET", h.path("incidents"), params={"$filter": "x eq"}),
        "401": await h.call("GET", h.path("incidents"), token=None),
        "403": await h.call("DELETE", h.path("incidents", inc["name"]), token=h.issue(client_id="reader")),
        "404": await h.get_incident("missing"),
        "404-workspace": await h.call("GET", h.path("incidents", ws="nope")),
        "405": await h.call("PATCH", h.path("incidents", inc["name"])),
        "409": await h.put_incident(inc["name"], stale),
        "429": await h.call("POST", h.path("incidents", inc["name"], "alerts")),
        "500": await h.call("POST", h.path("incidents", inc["name"], "entities")),
        "503": await h.call("GET", h.path("incidents", inc["name"], "comments")),
    }
    for label, reply in replies.items():
        assert reply.status == int(label[:3]), (label, reply.body)
        # The observed 405 body carries an extra "innerError": null (REFERENCE A.2).
        ref = spec.definition_uri("CloudError", COMMON_TYPES)
        problems = spec.errors(reply.body, ref, strict=label != "405")
        assert not problems, (label, problems)
        assert isinstance(reply.body["error"]["code"], str) and reply.body["error"]["code"]
        assert isinstance(reply.body["error"]["message"], str) and reply.body["error"]["message"]
