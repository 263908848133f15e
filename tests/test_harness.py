"""The test harness itself holds on any machine: missing spec files fail, hung tests time out,
the crash hook refuses a rule it does not know."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.testing import crashpoint
from tests import sentinel_spec


def test_missing_openapi_files_fail_the_test_naming_where_they_belong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "shared" / "api" / "sentinel-openapi"
    monkeypatch.setattr(sentinel_spec, "STABLE", missing)
    with pytest.raises(pytest.fail.Exception, match="OpenAPI files are missing") as failed:
        sentinel_spec.require_spec()
    assert str(missing) in str(failed.value)


def test_the_openapi_files_are_where_the_tests_expect_them(sentinel_spec: Path) -> None:
    assert (sentinel_spec / "2025-09-01" / "Incidents.json").is_file()


def test_every_test_has_a_timeout(pytestconfig: pytest.Config) -> None:
    assert float(pytestconfig.getini("timeout")) >= 120  # generous: a slow CI machine never trips it


def test_crash_rules_name_known_writes_and_counts() -> None:
    assert crashpoint.parse_rules("snow_patch:3, sentinel_put:1") == {"snow_patch": 3, "sentinel_put": 1}
    for bad in ("snow_delete:1", "snow_patch", "snow_patch:0", "snow_patch:x"):
        with pytest.raises(ValueError, match="expected kind:N with kind one of"):
            crashpoint.parse_rules(bad)
