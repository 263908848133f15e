"""The systemd unit in contrib/: hardened, secrets by LoadCredential, consistent with the CLI,
accepted by ``systemd-analyze verify`` and scored by ``systemd-analyze security``."""

from __future__ import annotations

import configparser
import re
import shutil
from pathlib import Path

from agent.cli.main import build_parser
from tests.os_tools import run, tool

UNIT = Path(__file__).parents[1] / "contrib" / "sentinel-snow-sync.service"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_is_hardened_and_runs_the_agent() -> None:
    service = _unit()["Service"]
    for key, want in {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "sentinel-snow-sync",
        "CapabilityBoundingSet": "",
        "RestartPreventExitStatus": "2 7",
    }.items():
        assert service[key] == want, key
    command = service["ExecStart"].split()
    assert command[-1] == "run"
    assert build_parser().parse_args(command[1:]).command == "run"


def test_credentials_match_the_documented_ini_keys() -> None:
    text = UNIT.read_text()
    names = [
        line.split("=", 1)[1].split(":", 1)[0]
        for line in text.splitlines()
        if line.startswith("LoadCredential=")
    ]
    assert names == ["client_secret", "snow_password"]
    for name in names:
        assert f"$CREDENTIALS_DIRECTORY/{name}" in text


def _root_with_the_unit(root: Path) -> Path:
    """A file system root as the unit's install steps leave it: the unit in /etc/systemd/system,
    the agent's executable where ExecStart expects it, and the distribution's own units (the
    targets the unit orders itself after)."""
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    installed = root / "etc" / "systemd" / "system" / UNIT.name
    installed.parent.mkdir(parents=True)
    shutil.copy(UNIT, installed)
    executable = root / _unit()["Service"]["ExecStart"].split()[0].lstrip("/")
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n# stands in for the console script pip installs here\n")
    executable.chmod(0o755)
    return installed


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    installed = _root_with_the_unit(tmp_path)
    result = run(
        [tool("systemd-analyze"), "verify", f"--root={tmp_path}", "/" + str(installed.relative_to(tmp_path))]
    )
    # verify exits 0 on an unknown key or a value it cannot parse, but says so: any output fails
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_systemd_analyze_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    installed = _root_with_the_unit(tmp_path)
    installed.write_text(installed.read_text().replace("ProtectHome=yes", "ProtectHom=yes"))
    result = run(
        [tool("systemd-analyze"), "verify", f"--root={tmp_path}", "/" + str(installed.relative_to(tmp_path))]
    )
    assert "Unknown key 'ProtectHom'" in result.stdout


def test_systemd_analyze_security_score_is_the_one_in_the_readme() -> None:
    # --offline reads the unit file itself, so no running systemd is needed
    result = run([tool("systemd-analyze"), "security", "--offline=true", "--no-pager", UNIT])
    assert result.returncode == 0, result.stdout
    found = re.search(rf"Overall exposure level for {re.escape(UNIT.name)}: (\d+\.\d) (\w+)", result.stdout)
    assert found, result.stdout
    score, verdict = found.groups()
    assert float(score) <= 2.0, result.stdout  # systemd's scale: 0 (locked down) to 10 (exposed)
    readme = (UNIT.parents[1] / "README.md").read_text()
    assert f"exposure level {score} ({verdict})" in readme, f"README.md should state {score} ({verdict})"


LINK = re.compile(r"\]\(([^)#\s]+)")


def test_the_readme_s_operations_kit_links_every_piece_and_every_link_resolves() -> None:
    root = UNIT.parents[1]
    readme = (root / "README.md").read_text()
    kit = readme.split("\n## Operations kit\n", 1)[1].split("\n## ", 1)[0]
    linked = set(LINK.findall(kit))
    for piece in (
        "contrib/sentinel-snow-sync.service",
        "contrib/grafana/sentinel-snow-sync.json",
        "contrib/prometheus/alerts.yml",
        "contrib/rsyslog/",
        "contrib/splunk/",
        "contrib/sentinel/",
        "docs/siem.md",
    ):
        assert piece in linked, piece
    for target in linked:
        assert (root / target).exists(), target
    siem = root / "docs" / "siem.md"
    for target in LINK.findall(siem.read_text()):
        assert (siem.parent / target).exists(), target
