"""The ``[oauth:NAME]`` section: an Entra ID application (this connector's part of the config schema)."""

from __future__ import annotations

from agent.config.convert import API_VERSION, choice, guid, https_url, pattern
from agent.config.model import CLOUDS, OAuthApp
from agent.config.schema import Loaded
from agent.config.section import Section

OAUTH_KEYS = (
    "tenant_id",
    "client_id",
    "client_secret_env",
    "client_secret_file",
    "client_secret",
    "certificate_file",
    "cloud",
    "authority_host",
    "management_url",
    "api_version",
)


def read_oauth(sec: Section, name: str, loaded: Loaded | None = None) -> OAuthApp:
    tenant_id = sec.required("tenant_id", guid, "")
    client_id = sec.required("client_id", guid, "")
    has_secret = sec.is_set(*secret_keys("client_secret"))
    has_certificate = sec.is_set("certificate_file")
    if not has_secret and not has_certificate:
        sec.problem(
            "client_secret",
            "required: set client_secret_env, client_secret_file, client_secret or certificate_file",
        )
    elif has_secret and has_certificate:
        sec.problem("certificate_file", "set either a client secret or certificate_file, not both")
    secret = sec.secret("client_secret")
    certificate = sec.readable_file("certificate_file", private=True)
    cloud = sec.get("cloud", choice(*CLOUDS), "public")
    preset = CLOUDS[cloud]
    return OAuthApp(
        name=name,
        tenant_id=tenant_id,
        client_id=client_id,
        client_secret=secret,
        certificate_file=certificate,
        cloud=cloud,
        authority_host=sec.get("authority_host", https_url, preset.authority_host),
        management_url=sec.get("management_url", https_url, preset.management_url),
        api_version=sec.get("api_version", pattern(API_VERSION, "an api-version (YYYY-MM-DD)"), "2025-09-01"),
        portal_host=preset.portal_host,
    )


def secret_keys(base: str) -> tuple[str, str, str]:
    return (f"{base}_env", f"{base}_file", base)
