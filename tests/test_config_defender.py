"""``[defender:NAME]`` and ``[closure_to_defender]``: the ini contract of a Defender XDR source."""

from __future__ import annotations

from pathlib import Path

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
