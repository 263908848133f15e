"""The Splunk and Microsoft Sentinel recipes in contrib/, checked against the log contract
(docs/logging.md) and against the log of a real run (the ``ops_run`` fixture).

Splunk: its line breaking, timestamp and debug-filter settings are applied here to the captured
lines with the same regular expressions. Sentinel: every field the data collection rule's
transform and the KQL parser function read is a documented key that the real run wrote, with
the JSON type their conversion expects; the rule's output matches the table it writes to.
"""

from __future__ import annotations

import configparser
import io
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.log import Logger
from tests.ops_run import OpsRun

ROOT = Path(__file__).parents[1]
CONTRIB = ROOT / "contrib"
LOG_PATH = "/var/log/sentinel-snow-sync/agent.log"
BACKTICKED = re.compile(r"`([a-z_][a-z0-9_]*)`")
ASSIGN = re.compile(r"\b(\w+)\s*=\s*(?:(\w+)\()?e\.(\w+)\)?")
FIELD_REF = re.compile(r"\be\.(\w+)|\be\[")


# --- the log contract --------------------------------------------------------------------------


def documented_keys() -> set[str]:
    """Every key docs/logging.md defines: the stable keys, the summary fields and the fields of
    each event."""
    keys: set[str] = set()
    section = ""
    for line in (ROOT / "docs" / "logging.md").read_text().splitlines():
        if line.startswith("#"):
            section = line.lstrip("#").strip()
            continue
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if section in ("Stable keys", "One summary per workspace cycle"):
            keys |= set(BACKTICKED.findall(cells[0]))
        elif len(cells) == 4:  # an event table: event | level | fields | meaning
            keys |= set(BACKTICKED.findall(cells[2]))
    return keys


def fits(conversion: str | None, value: Any) -> bool:
    """Whether KQL's ``conversion`` turns this JSON value into a value (never null)."""
    if conversion == "tostring":
        return isinstance(value, str)
    if conversion == "todatetime":
        return isinstance(value, str) and _iso(value) is not None
    if conversion == "toreal":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if conversion == "tobool":
        return isinstance(value, bool)
    if conversion in ("todynamic", None):
        return isinstance(value, (list, dict))
    raise AssertionError(f"teach this test KQL's {conversion}")


def _iso(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def check_fields(kql: str, records: list[dict[str, Any]], documented: set[str]) -> dict[str, str]:
    """``column -> conversion(key)`` for every ``e.key`` the KQL reads; asserts each key is
    documented and was written by the real run with a type the conversion accepts."""
    read = {m.group(3): (m.group(1), m.group(2)) for m in ASSIGN.finditer(kql)}
    referenced = {m.group(1) for m in FIELD_REF.finditer(kql)}
    assert None not in referenced, "read fields as e.key, so this test sees them"
    assert referenced == set(read), f"read without a column: {referenced - set(read)}"
    for key, (column, conversion) in read.items():
        assert key in documented, f"{column} reads {key!r}, which docs/logging.md does not define"
        values = [r[key] for r in records if key in r]
        assert values, f"{column} reads {key!r}, which the real run never wrote"
        bad = [v for v in values if not fits(conversion, v)]
        assert not bad, f"{column} = {conversion}(e.{key}) but the run wrote {bad[:3]}"
    return {column: f"{conversion}({key})" for key, (column, conversion) in read.items()}


def project_columns(kql: str) -> list[str]:
    """The output column names of the last ``| project``."""
    clause = kql.rsplit("| project", 1)[1]
    items, depth, current = [], 0, ""
    for char in clause:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item.split("=", 1)[0].strip() for item in items]


def test_the_contract_parser_reads_docs_logging() -> None:
    keys = documented_keys()
    assert {"ts", "level", "event", "workspace", "instance", "incident", "snow_number"} <= keys
    assert {"listed_sentinel", "duration_ms", "ok"} <= keys  # summary fields
    assert {"check", "kind", "next_try", "field", "winner", "message"} <= keys  # event fields
    assert "cycle_summary" not in keys and "info" not in keys


def test_every_recipe_reads_the_same_log_file() -> None:
    unit = (CONTRIB / "sentinel-snow-sync.service").read_text()
    assert f"StandardOutput=append:{LOG_PATH}" in unit
    assert f'File="{LOG_PATH}"' in (CONTRIB / "rsyslog" / "sentinel-snow-sync.conf").read_text()
    assert f"[monitor://{LOG_PATH}]" in (CONTRIB / "splunk" / "inputs.conf").read_text()
    [source] = orjson.loads((CONTRIB / "sentinel" / "dcr.json").read_bytes())["properties"]["dataSources"][
        "logFiles"
    ]
    assert source["filePatterns"] == [LOG_PATH]


# --- Splunk ------------------------------------------------------------------------------------


def splunk(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((CONTRIB / "splunk" / name).read_text())
    return parser


SOURCETYPE = "sentinel_snow_sync:json"


def test_splunk_breaks_the_log_into_one_event_per_line(ops_run: OpsRun) -> None:
    props = splunk("props.conf")[SOURCETYPE]
    assert props["SHOULD_LINEMERGE"] == "false"
    text = ops_run.log.decode()
    # LINE_BREAKER: the text its first group matches is removed, events are what lies between
    events = [part for part in re.split(props["LINE_BREAKER"], text) if part and not part.isspace()]
    assert events == text.splitlines()
    longest = max(len(line.encode()) for line in events)
    assert longest < int(props["TRUNCATE"])
    rsyslog = (CONTRIB / "rsyslog" / "sentinel-snow-sync.conf").read_text()
    assert 'maxMessageSize="64k"' in rsyslog and int(props["TRUNCATE"]) == 64 * 1024  # the same limit


def test_splunk_takes_each_event_s_time_from_ts(ops_run: OpsRun) -> None:
    props = splunk("props.conf")[SOURCETYPE]
    assert props["TZ"] == "UTC" and props["KV_MODE"] == "json"
    python_format = props["TIME_FORMAT"].replace("%3N", "%f")
    lookahead = int(props["MAX_TIMESTAMP_LOOKAHEAD"])
    for line in ops_run.log.decode().splitlines():
        prefix = re.match(props["TIME_PREFIX"], line)
        assert prefix, line
        stamp = line[prefix.end() : prefix.end() + lookahead]
        parsed = datetime.strptime(stamp, python_format).replace(tzinfo=UTC)
        assert parsed == datetime.fromisoformat(orjson.loads(line)["ts"]), line


def test_splunk_drops_debug_lines_only(ops_run: OpsRun) -> None:
    props = splunk("props.conf")[SOURCETYPE]
    transforms = splunk("transforms.conf")
    [name] = [v for k, v in props.items() if k.startswith("TRANSFORMS-")]
    drop = transforms[name]
    assert (drop["DEST_KEY"], drop["FORMAT"]) == ("queue", "nullQueue")
    out = io.StringIO()
    logger = Logger()
    logger.configure(level="debug", stream=out)
    logger.debug("http_response", system="sentinel", method="GET", url="https://x/", status=200, ms=3.1)
    logger.debug("http_body", system="sentinel", method="GET", url="https://x/", request="", response="{}")
    for line in out.getvalue().splitlines():
        assert re.search(drop["REGEX"], line), line
    captured = ops_run.log.decode().splitlines()
    assert {orjson.loads(line)["level"] for line in captured} >= {"info", "warning", "error"}
    assert not [line for line in captured if re.search(drop["REGEX"], line)]


def test_splunk_input_uses_the_sourcetype() -> None:
    inputs = splunk("inputs.conf")
    assert inputs[f"monitor://{LOG_PATH}"]["sourcetype"] == SOURCETYPE
    assert SOURCETYPE in splunk("props.conf")


# --- Microsoft Sentinel ------------------------------------------------------------------------


def dcr() -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads((CONTRIB / "sentinel" / "dcr.json").read_bytes())
    return loaded


def table() -> dict[str, str]:
    schema = orjson.loads((CONTRIB / "sentinel" / "table.json").read_bytes())["properties"]["schema"]
    assert schema["name"] == "SentinelSnowSync_CL"
    return {c["name"]: c["type"] for c in schema["columns"]}


KQL_TYPES = {"tostring": "string", "todatetime": "datetime", "toreal": "real", "tobool": "boolean"}


def test_the_data_collection_rule_is_consistent() -> None:
    props = dcr()["properties"]
    [(stream, declared)] = props["streamDeclarations"].items()
    # the Azure Monitor Agent's text-log stream: each line whole in RawData
    assert {c["name"]: c["type"] for c in declared["columns"]} == {
        "TimeGenerated": "datetime",
        "Computer": "string",
        "RawData": "string",
    }
    [source] = props["dataSources"]["logFiles"]
    assert source["format"] == "text" and source["streams"] == [stream]
    [flow] = props["dataFlows"]
    destinations = {d["name"] for d in props["destinations"]["logAnalytics"]}
    assert flow["streams"] == [stream] and set(flow["destinations"]) <= destinations
    assert flow["outputStream"] == "Custom-SentinelSnowSync_CL"
    assert flow["transformKql"].startswith("source ")


def test_the_rule_writes_the_table_s_columns_from_documented_fields(ops_run: OpsRun) -> None:
    kql = dcr()["properties"]["dataFlows"][0]["transformKql"]
    columns = check_fields(kql, ops_run.records, documented_keys())
    assert project_columns(kql) == list(table())
    for column, conversion in columns.items():
        if column in table():
            assert table()[column] == KQL_TYPES[conversion.split("(")[0]], column


def test_the_parser_function_reads_documented_fields(ops_run: OpsRun) -> None:
    kql = (CONTRIB / "sentinel" / "SentinelSnowSync.kql").read_text()
    body = "\n".join(line for line in kql.splitlines() if not line.lstrip().startswith("//"))
    columns = check_fields(body, ops_run.records, documented_keys())
    assert columns["Event"] == "tostring(event)" and columns["TimeGenerated"] == "todatetime(ts)"
    assert {"Check", "Kind", "NextTry", "Field", "Error", "DurationMs", "Ok"} <= set(columns)
    assert project_columns(body)[-1] == "Details"  # the whole event, keys of later versions too
    # the Syslog branch finds the lines the unit tags
    unit = (CONTRIB / "sentinel-snow-sync.service").read_text()
    identifier = re.search(r"^SyslogIdentifier=(.+)$", unit, re.M)
    assert identifier and f'ProcessName == "{identifier.group(1)}"' in body
    # and the table branch reads columns the table has
    assert {"TimeGenerated", "Computer", "RawData"} <= set(table())


@pytest.mark.parametrize(
    ("kql", "problem"),
    [
        ("| project Severity = tostring(e.severity_label)", "does not define"),
        ("| project Listed = tostring(e.listed_snow)", "the run wrote"),
        ("| project Kind = tostring(e.kind), X = e['kind']", "read fields as e.key"),
        ("| project Winner = tostring(e.winner)", None),
    ],
)
def test_the_field_check_catches_mistakes(kql: str, problem: str | None, ops_run: OpsRun) -> None:
    if problem is None:
        check_fields(kql, ops_run.records, documented_keys())
        return
    with pytest.raises(AssertionError, match=problem):
        check_fields(kql, ops_run.records, documented_keys())
