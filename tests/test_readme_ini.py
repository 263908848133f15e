"""What a new user writes from the README loads, and means what the README says.

The README's ini blocks are taken verbatim (placeholders such as ``<directory id>`` filled in, the
secret files and environment variables they name provided), and its mapping tables are written
out as ini sections row by row, as a reader would type them: the loader must accept them and they
must equal the built-in defaults the tables claim to describe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import Config, InstanceMaps, load_config

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")

FILLS = {
    "<directory id>": "0b5c8e1a-6a3f-4c53-9f1e-2d6c4f3b7a10",
    "<application id>": "7d0e4c2b-1f6a-4e8b-b3c5-9a1d2e3f4a5b",
    "<subscription id>": "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9",
}


def ini_blocks() -> list[str]:
    return re.findall(r"^```ini\n(.*?)^```", TEXT, flags=re.M | re.S)


def block_with(section: str, *words: str) -> str:
    (block,) = [
        b
        for b in ini_blocks()
        if re.search(rf"^\[{re.escape(section)}\]", b, flags=re.M) and all(w in b for w in words)
    ]
    return block


def setup_block(tmp_path: Path) -> str:
    """The "Write the ini file" block with its placeholders and its machine paths made real."""
    block = block_with("workspace:soc-eu")
    for placeholder, value in FILLS.items():
        block = block.replace(placeholder, value)
    assert "<" not in block, "a placeholder this test does not know: " + block
    return block.replace("/var/lib/sentinel-snow-sync/", f"{tmp_path}/")


def secrets(tmp_path: Path) -> dict[str, str]:
    for name, value in (("client_secret", "client-secret-value"), ("snow_password", "snow-password-value")):
        (tmp_path / name).write_text(value + "\n", encoding="utf-8")
        (tmp_path / name).chmod(0o600)  # as systemd's credentials are (the loader warns otherwise)
    return {"CREDENTIALS_DIRECTORY": str(tmp_path)}


def load(tmp_path: Path, text: str, env: dict[str, str]) -> Config:
    path = tmp_path / "agent.ini"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ=env)


def test_the_setup_block_loads_as_written(tmp_path: Path) -> None:
    config = load(tmp_path, setup_block(tmp_path), secrets(tmp_path))
    assert config.warnings == ()
    app = config.oauth["default"]
    assert app.client_secret is not None and app.client_secret.reveal() == "client-secret-value"
    snow = config.servicenow["default"]
    assert snow.password is not None and snow.password.reveal() == "snow-password-value"
    ws = config.workspaces["soc-eu"]
    assert (ws.workspace_name, ws.incident_filter, ws.assignment_group) == (
        "law-soc-eu",
        ("snow",),
        "SOC Tier 1",
    )
    assert config.agent.poll_interval == 60.0
    assert config.agent.metrics_listen == ("127.0.0.1", 9464)


def test_the_mssp_block_loads_as_written(tmp_path: Path) -> None:
    env = {name: f"{name.lower()}-value" for name in re.findall(r"_env = (\w+)", block_with("oauth:contoso"))}
    config = load(tmp_path, block_with("oauth:contoso"), env)
    assert set(config.workspaces) == {"contoso", "fabrikam"}
    assert config.servicenow_for("contoso").instance_url == "https://mssp.service-now.com"
    assert config.servicenow["fabrikam"].auth == "oauth"
    assert config.workspaces["contoso"].sys_domain == "0f8b2c4d6e8f0a1b2c3d4e5f6a7b8c9d"


def test_the_high_availability_block_loads_with_the_setup_block(tmp_path: Path) -> None:
    (tmp_path / "db-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    ha = block_with("agent", "state = postgresql://").replace("/etc/sentinel-snow-sync/", f"{tmp_path}/")
    assert ha.startswith("[agent]\nstate = postgresql://")
    sections = re.split(r"(?m)^(?=\[)", setup_block(tmp_path))
    others = "".join(s for s in sections if not s.startswith("[agent]"))  # the HA block replaces [agent]
    config = load(tmp_path, ha + "\n" + others, {**secrets(tmp_path), "SNOW_SYNC_DB_PASSWORD": "db-pw"})
    assert config.agent.store is not None
    assert config.agent.store.value.startswith("postgresql://sentinel_sync@db.example.com:5432/sentinel_sync")
    assert config.agent.failover_timeout == 30.0


# --- the mapping tables ------------------------------------------------------------------------


def table_rows(heading: str) -> dict[str, str]:
    """``section -> default`` cells of the table below ``heading``."""
    part = TEXT.split(heading, 1)[1]
    rows: dict[str, str] = {}
    for line in part.splitlines():
        if not line.startswith("| `["):
            if rows:
                break
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[-1]
    return rows


def ini_rows(cell: str) -> list[tuple[str, str]]:
    """A README cell as ini rows: ``A = 1, B = 2``; ``10 = New; 16, 18 = Active``; ``X and Y = v``."""
    rows: list[tuple[str, str]] = []
    for group in cell.split(";"):
        pairs = [group] if group.count("=") == 1 else group.split(",")
        for pair in pairs:
            keys, value = (side.strip() for side in pair.split("="))
            for key in re.split(r",| and ", keys):
                rows.append((key.strip(), value))
    return rows


def written(sections: dict[str, list[tuple[str, str]]]) -> str:
    return "".join(
        f"\n[{title}]\n" + "".join(f"{key} = {value}\n" for key, value in rows)
        for title, rows in sections.items()
    )


def maps_of(tmp_path: Path, extra: str, table: str = "incident") -> InstanceMaps:
    text = setup_block(tmp_path).replace("caller_id = svc_sentinel_sync", f"incident_table = {table}") + extra
    return load(tmp_path, text, secrets(tmp_path)).mappings.for_instance("default")


SIMPLE = ("severity_to_servicenow", "severity_to_sentinel", "status_to_servicenow", "status_to_sentinel")


def test_itsm_tables_written_out_are_accepted_and_are_the_defaults(tmp_path: Path) -> None:
    rows = table_rows("#### The mapping tables")
    sections = {name: ini_rows(rows[f"`[{name}]`"]) for name in (*SIMPLE, "closure_to_servicenow")}
    # "(Resolved)" in the status cell is a reader's aid, not part of the value
    sections["status_to_servicenow"] = [(k, v.split(" (")[0]) for k, v in sections["status_to_servicenow"]]
    # [closure_to_sentinel]: "Solution/Workaround provided" is two codes; typed out as a reader would
    closure = rows["`[closure_to_sentinel]`"]
    assert "Solution/Workaround provided, Resolved by problem = TruePositive/SuspiciousActivity" in closure
    assert (
        "Resolved by caller/change/request, Known error, User error = BenignPositive/SuspiciousButExpected"
        in closure
    )
    assert "Duplicate, No resolution provided, `*` = Undetermined" in closure
    sections["closure_to_sentinel"] = [
        *(
            (code, "TruePositive/SuspiciousActivity")
            for code in ("Solution provided", "Workaround provided", "Resolved by problem")
        ),
        *(
            (code, "BenignPositive/SuspiciousButExpected")
            for code in (
                "Resolved by caller",
                "Resolved by change",
                "Resolved by request",
                "Known error",
                "User error",
            )
        ),
        *((code, "Undetermined") for code in ("Duplicate", "No resolution provided", "*")),
    ]
    (tmp_path / "defaults").mkdir()
    defaults = maps_of(tmp_path / "defaults", "")
    typed = maps_of(tmp_path, written(sections))
    for name in (*SIMPLE, "closure_to_servicenow", "closure_to_sentinel"):
        assert getattr(typed, name) == getattr(defaults, name), name
        assert typed.sources[name] == name, name  # read from the file, not defaulted


def test_sir_tables_written_out_are_accepted_and_are_the_defaults(tmp_path: Path) -> None:
    rows = table_rows("its close codes, the `severity` field and the `caller` field. Its default maps:")
    severity_cell = rows["`[severity_to_servicenow]` / `[severity_to_sentinel]`"]
    to_snow, to_sentinel = (half.split(" (field")[0] for half in severity_cell.split(" / "))
    sections = {
        "severity_to_servicenow": ini_rows(to_snow),
        "severity_to_sentinel": ini_rows(to_sentinel),
        "status_to_servicenow": [
            (k, v.split(" (")[0]) for k, v in ini_rows(rows["`[status_to_servicenow]`"])
        ],
        "status_to_sentinel": ini_rows(rows["`[status_to_sentinel]`"]),
        "closure_to_servicenow": ini_rows(rows["`[closure_to_servicenow]`"]),
    }
    (tmp_path / "defaults").mkdir()
    defaults = maps_of(tmp_path / "defaults", "", table="sn_si_incident")
    typed = maps_of(tmp_path, written(sections), table="sn_si_incident")
    for name in sections:
        assert getattr(typed, name) == getattr(defaults, name), name
    # "everything else Undetermined": a code the table does not list
    assert defaults.closure_for_sentinel("Some code of our own")[0] == "Undetermined"


@pytest.mark.parametrize("cell", ["A = 1, B = 2", "10 = New; 16, 18 = Active", "X and Y = v, Z = w"])
def test_the_cell_reader(cell: str) -> None:
    assert (
        ini_rows(cell)
        == {
            "A = 1, B = 2": [("A", "1"), ("B", "2")],
            "10 = New; 16, 18 = Active": [("10", "New"), ("16", "Active"), ("18", "Active")],
            "X and Y = v, Z = w": [("X", "v"), ("Y", "v"), ("Z", "w")],
        }[cell]
    )
