"""The systemd unit in contrib/: hardened, secrets by LoadCredential, and consistent with the CLI."""

from __future__ import annotations

import configparser
from pathlib import Path

from agent.cli import build_parser

UNIT = Path(__file__).parents[1] / "contrib" / "sentinel-snow-sync.service"


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
