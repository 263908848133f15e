"""``[defender:NAME]`` and ``[closure_to_defender]``: the ini contract of a Defender XDR source."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.connectors.graph.section import DEFENDER_KEYS
from tests.test_config import load, problems

DEFENDER = {"oauth": "default", "servicenow": "default", "incident_filter": "snow"}


def test_defender_section_gets_its_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, {"defender:xdr": dict(DEFENDER)})
    xdr = config.defenders["xdr"]
    assert (xdr.oauth, xdr.servicenow, xdr.incident_filter) == ("default", "default", ("snow",))
    assert (xdr.graph_url, xdr.max_age_days, xdr.enabled) == ("https://graph.microsoft.com", 30, True)
    assert config.mappings.for_instance("default").closure_to_defender == {}
    assert config.warnings == ()


def test_a_defender_only_configuration_needs_no_workspace(tmp_path: Path) -> None:
    config = load(tmp_path, {"workspace:soc-eu": None, "defender:xdr": {"incident_filter": ""}})
    assert config.workspaces == {} and config.defenders["xdr"].incident_filter == ()


def test_graph_url_follows_the_apps_cloud_and_china_is_refused(tmp_path: Path) -> None:
    usgov = load(tmp_path, {"oauth:default": {"cloud": "usgov"}, "defender:xdr": {}})
    assert usgov.defenders["xdr"].graph_url == "https://graph.microsoft.us"  # GRAPH.md A.3
    dod = load(
        tmp_path,
        {"oauth:default": {"cloud": "usgov"}, "defender:xdr": {"graph_url": "dod-graph.microsoft.us/"}},
    )
    assert dod.defenders["xdr"].graph_url == "https://dod-graph.microsoft.us"
    assert problems(tmp_path, {"oauth:default": {"cloud": "china"}, "defender:xdr": {}}) == [
        "[defender:xdr] oauth: [oauth:default] is in cloud china (21Vianet), which has no Microsoft Graph "
        "security incidents API (Defender XDR incidents cannot be synced there); sync the Sentinel workspace"
    ]


def test_defender_problems_name_section_and_key(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        {
            "defender:xdr": {"oauth": "defualt", "servicenow": "eu", "max_age_days": "0", "colour": "x"},
            "defender:soc-eu": {},
        },
    ) == [
        "[defender:xdr] colour: unknown key",
        "[defender:xdr] max_age_days: 0 is out of range (1 to 3650)",
        "[defender:xdr] oauth: no [oauth:defualt] section (did you mean default?)",
        "[defender:xdr] servicenow: no [servicenow:eu] section (defined: default)",
        "[defender:soc-eu]: 'soc-eu' is the name of [workspace:soc-eu] too; give each source its own",
    ]
    assert problems(tmp_path, extra="[defender]\noauth = default\n") == [
        "[defender]: name the defender: [defender:NAME]"
    ]


def test_closure_to_defender_takes_the_pairs_of_b3(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "defender:xdr": {},
            "closure_to_defender": {
                "Solved (Permanently)": "TruePositive/Malware",
                "Not Solved (Not Reproducible)": "falsePositive/notEnoughDataToValidate",
                "*": "unknown",
            },
        },
    )
    assert config.mappings.for_instance("default").closure_to_defender == {
        "Solved (Permanently)": ("truePositive", "malware"),
        "Not Solved (Not Reproducible)": ("falsePositive", "notEnoughDataToValidate"),
        "*": ("unknown", "unknown"),
    }
    assert problems(
        tmp_path,
        {
            "defender:xdr": {},
            "closure_to_defender": {"a": "falsePositive/malware", "b": "benignPositive/other", "c": ""},
        },
    ) == [
        "[closure_to_defender] a: 'malware' does not go with falsePositive (GRAPH.md B.3): use one of "
        "notEnoughDataToValidate, notMalicious, other",
        "[closure_to_defender] b: 'benignPositive' is not a Graph classification (truePositive, "
        "informationalExpectedActivity, falsePositive, unknown)",
        "[closure_to_defender] c: empty value; use classification/determination, e.g. truePositive/malware",
    ]  # fmt: skip


def test_owners_and_assignment_groups_may_name_a_defender_source(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "defender:xdr": {},
            "owners:xdr": {"abel.tuter": "abel@tenant.example"},
            "assignment_groups:xdr": {"*": "XDR team"},
        },
    )
    assert config.mappings.owners_for("xdr") == {"abel.tuter": "abel@tenant.example"}
    assert [r.group for r in config.mappings.assignment_groups_by_workspace["xdr"]] == ["XDR team"]
    assert problems(tmp_path, {"defender:xdr": {}, "owners:xrd": {"a": "a@b.c"}}) == [
        "[owners:xrd]: no [workspace:xrd] or [defender:xrd] section (did you mean [owners:xdr]?)"
    ]


ROOT = Path(__file__).resolve().parents[1]


def test_the_commented_example_loads_once_uncommented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNOW_SYNC_CLIENT_SECRET", "s")
    monkeypatch.setenv("SNOW_SYNC_PASSWORD", "p")
    monkeypatch.setenv("SNOW_SYNC_US_CLIENT_SECRET", "u")
    lines = (ROOT / "agent.example.ini").read_text(encoding="utf-8").splitlines()
    start = lines.index("#[defender:contoso]")
    close = lines.index("#[closure_to_defender]")
    block: list[str] = []
    for first in (start, close):
        for line in lines[first:]:
            if not line.startswith("#"):
                break
            # "# text" stays a comment; "#key = value" and "#[section]" are the example, uncommented.
            block.append(line if line.startswith("# ") else line[1:])
    keys = {line.split("=", 1)[0].strip() for line in block if "=" in line and not line.startswith("#")}
    documented = "\n".join(lines[start:close])
    assert all(k in documented for k in DEFENDER_KEYS), [k for k in DEFENDER_KEYS if k not in documented]
    assert {"oauth", "graph_url", "servicenow", "incident_filter", "max_age_days", "enabled"} <= keys
    text = "\n".join(lines[: start - 1] + block + lines[start - 1 :])
    path = tmp_path / "agent.ini"
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    contoso = config.defenders["contoso"]
    assert (contoso.graph_url, contoso.incident_filter, contoso.assignment_group) == (
        "https://graph.microsoft.com", ("snow",), "SOC Tier 1",
    )  # fmt: skip
    assert config.mappings.for_instance("default").closure_to_defender["Solution provided"] == (
        "truePositive",
        "other",
    )


def test_the_readme_sections_load(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    part = readme.split("### Defender XDR incidents (Microsoft Graph)", 1)[1].split("\n### ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in part.split("```ini\n")[1:]]
    assert len(blocks) == 3 and "[defender:contoso]" in blocks[0] and "[closure_to_defender]" in blocks[1]
    config = load(tmp_path, {"workspace:soc-eu": None}, extra="\n" + "\n".join(blocks[:2]))
    assert config.workspaces == {} and config.defenders["contoso"].incident_filter == ("snow",)
    assert config.mappings.for_instance("default").closure_to_defender["*"] == ("unknown", "unknown")
    # "Onboarded workspaces": the section naming the workspace it takes over.
    onboarded = load(tmp_path, extra="\n" + blocks[2])
    assert onboarded.defenders["contoso"].workspaces == ("soc-eu",)


def test_onboarded_workspaces_must_be_configured_once_and_on_the_same_instance(tmp_path: Path) -> None:
    config = load(tmp_path, {"defender:xdr": {"workspaces": "soc-eu"}})
    assert config.defenders["xdr"].workspaces == ("soc-eu",)
    second = {"instance_url": "https://snow2.example", "username": "u", "password_env": "T_PASSWORD"}
    assert problems(
        tmp_path,
        {
            "servicenow:second": second,
            "defender:xdr": {"workspaces": "soc-eu, soc-ue"},
            "defender:xdr2": {"workspaces": "soc-eu"},
        },
    ) == [
        "[defender:xdr] workspaces: no [workspace:soc-ue] section (did you mean soc-eu?); keep the "
        "workspace configured while its incidents move to this source",
        "[defender:xdr2] workspaces: soc-eu is onboarded to [defender:xdr] already",
    ]
    assert problems(
        tmp_path,
        {"servicenow:second": second, "defender:xdr": {"workspaces": "soc-eu", "servicenow": "second"}},
    ) == [
        "[defender:xdr] workspaces: [workspace:soc-eu] syncs with [servicenow:default], this source with "
        "[servicenow:second]: their tickets cannot move"
    ]
