"""What an HTTP answer means, in :mod:`agent.errors` terms, and what of it may be logged.

* :func:`error_for_status` maps a non-success status to the error tree, with the code and
  message read from ARM, Graph, ServiceNow and Entra error bodies (:func:`error_details`);
  :func:`connection_error` maps a failure on the way (``NotSent`` only when the request cannot
  have left); :func:`not_json_error` and :func:`redirect_error` name what a non-JSON answer or a
  3xx usually is (REFERENCE E.7).
* :func:`redact_url` strips user-info passwords and secret-looking query values; every remote
  message is shortened to one line and redacted before it reaches an exception or a log line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import aiohttp
from yarl import URL

from agent.connectors.retry import parse_retry_after
from agent.errors import (
    EditConflict,
    Forbidden,
    NotFound,
    NotSent,
    PermanentError,
    RateLimited,
    RemoteError,
    TransientError,
)
from agent.log import redact

_MAX_URL_IN_MESSAGE = 300
_MAX_DETAIL = 300
_SECRET_QUERY_WORDS = frozenset(
    {"token", "secret", "password", "passwd", "pwd", "assertion", "apikey", "key", "sig", "signature", "code"}
)
_TRACE_LINES = ("Trace ID:", "Correlation ID:", "Timestamp:")
_URL_CREDENTIALS = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")
_NOT_SECRET_QUERY_KEYS = frozenset({"$skiptoken", "skiptoken"})
_SYSTEM_NAMES = {
    "servicenow": "ServiceNow",
    "sentinel": "Azure Resource Manager",
    "graph": "Microsoft Graph",
    "entra": "Entra ID",
}
# REFERENCE E.7: what a non-JSON answer from each remote usually is.
_NOT_JSON_CAUSES = {"servicenow": "hibernating instance, login page or proxy?"}


def redact_url(url: str | URL) -> str:
    """The URL with user-info passwords and secret-looking query values replaced by ``***``."""
    try:
        u = url if isinstance(url, URL) else URL(str(url), encoded=True)
        if u.password is not None:
            u = u.with_password("***")
        if u.raw_query_string:
            pairs = []
            for part in u.raw_query_string.split("&"):
                key, sep, _value = part.partition("=")
                if sep and _is_secret_key(unquote(key)):
                    part = f"{key}=***"
                pairs.append(part)
            u = u.with_query(None)
            text = str(u) + "?" + "&".join(pairs)
        else:
            text = str(u)
    except (ValueError, TypeError):
        text = str(url).split("?", 1)[0] + "?…"
    text = redact(text)
    if len(text) > _MAX_URL_IN_MESSAGE:
        text = text[:_MAX_URL_IN_MESSAGE] + "…"
    return text


def _is_secret_key(key: str) -> bool:
    k = key.lower()
    if k in _NOT_SECRET_QUERY_KEYS:
        return False
    return k.endswith("token") or any(word in _SECRET_QUERY_WORDS for word in re.split(r"[-_.$]", k))


def error_details(body: Any) -> tuple[str | None, str | None]:
    """(code, message) from an error body of any of the three systems.

    ARM and Graph: ``{"error":{"code","message"}}`` (REFERENCE A.10, GRAPH.md D.5; Graph's
    ``$top`` error has an empty code, which reads as none); ServiceNow:
    ``{"error":{"message","detail"},"status":"failure"}`` (C.5); Entra and ServiceNow OAuth:
    ``{"error":"invalid_client","error_description":"AADSTS...\\r\\nTrace ID..."}`` (B.1, C.7).
    """
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            if isinstance(code, str) and code:
                return _clean(code), _clean(err.get("message"))
            if code == "" and "message" in err:
                return None, _clean(err.get("message"))
            return _clean(err.get("message")), _clean(err.get("detail"))
        if isinstance(err, str):
            return _clean(err), _clean(body.get("error_description"))
        if isinstance(body.get("message"), str):
            return None, _clean(body.get("message"))
        return None, None
    if isinstance(body, str) and body.strip() and not body.lstrip().startswith("<"):
        return None, _clean(body)
    return None, None


def _clean(value: Any) -> str | None:
    """A remote message on one line, shortened and redacted.

    Line breaks become spaces (ServiceNow's data-policy detail continues on the next line);
    Entra's trailing ``Trace ID``/``Correlation ID``/``Timestamp`` lines are dropped, and so is
    the password of any ``scheme://user:password@`` URL (proxy errors quote the proxy URL).
    """
    if not isinstance(value, str) or not value.strip():
        return None
    lines = [line.strip() for line in value.strip().splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(_TRACE_LINES)] or lines[:1]
    text = _URL_CREDENTIALS.sub(r"\1***@", " ".join(kept))
    if len(text) > _MAX_DETAIL:
        text = text[:_MAX_DETAIL] + "…"
    return redact(text)


def error_for_status(
    system: str, method: str, url: str, status: int, headers: Mapping[str, str], body: Any
) -> RemoteError:
    """The exception for a non-success HTTP status. ``url`` must already be redacted."""
    code, detail = error_details(body)
    if status == 429:
        return RateLimited(
            system,
            method,
            url,
            status,
            code,
            detail,
            retry_after=_rate_limit_wait(headers),
        )
    if status >= 500 or status == 408:
        return TransientError(system, method, url, status, code, detail)
    if status == 409:
        return EditConflict(system, method, url, status, code, detail)
    if status == 404:
        return NotFound(system, method, url, status, code, detail)
    if status == 403:
        return Forbidden(system, method, url, status, code, detail)
    return PermanentError(system, method, url, status, code, detail)


def _rate_limit_wait(headers: Mapping[str, str]) -> float | None:
    """Seconds a 429 asks to wait: ``Retry-After``, else ServiceNow's ``X-RateLimit-Reset`` (the
    epoch when the hourly window resets, REFERENCE C.6)."""
    wait = parse_retry_after(headers.get("Retry-After"))
    if wait is None:
        try:
            wait = max(0.0, float(headers.get("X-RateLimit-Reset", "")) - time.time())
        except ValueError:
            return None
    return wait


def connection_error(system: str, method: str, url: str, exc: BaseException) -> RemoteError:
    """Map an aiohttp/asyncio failure; ``NotSent`` only when the request cannot have left."""
    name = type(exc).__name__
    text = _clean(str(exc)) or name
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return PermanentError(
            system,
            method,
            url,
            None,
            "TLSVerifyFailed",
            f"TLS verification failed (is the CA in [agent] ca_bundle?): {text}",
        )
    if isinstance(
        exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.ClientHttpProxyError)
    ):
        return NotSent(system, method, url, None, name, text)
    if isinstance(exc, aiohttp.InvalidURL):
        return PermanentError(system, method, url, None, name, text)
    return TransientError(system, method, url, None, name, text)


def not_json_error(
    system: str, method: str, url: str, status: int, headers: Mapping[str, str], raw: bytes
) -> TransientError:
    """A body that is not JSON from a JSON API (REFERENCE E.7): transient, in words a person reads.

    A hibernating ServiceNow developer instance, an SSO login page or a proxy's block page all
    answer HTML, often with status 200. None of it says anything about the request itself, so
    it is never a permanent failure of the record it was about.
    """
    kind = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    html = kind in ("text/html", "application/xhtml+xml") or raw.lstrip()[:1] == b"<"
    if not html and kind.endswith("json"):
        # Declared JSON but cut off or garbled: a connection that broke mid-answer, most likely.
        return TransientError(
            system, method, url, status, "InvalidJson", "the response body is not valid JSON (cut off?)"
        )
    what = "HTML" if html else (kind or "a body that is not JSON")
    cause = _NOT_JSON_CAUSES.get(system, "login page or proxy?")
    name = _SYSTEM_NAMES.get(system, system)
    return TransientError(
        system, method, url, status, "NotJson", f"{name} answered {what}, not JSON ({cause})"
    )


def redirect_error(
    system: str, method: str, url: str, status: int, headers: Mapping[str, str]
) -> TransientError:
    """A 3xx answer: reported, never followed (REFERENCE E.7: an SSO login or a proxy redirects too)."""
    location = headers.get("Location", "")
    target = redact_url(location) if location else "an unnamed location"
    name = _SYSTEM_NAMES.get(system, system)
    return TransientError(
        system,
        method,
        url,
        status,
        "Redirected",
        f"{name} redirected the request to {target} (not followed: a login page, a proxy or a moved "
        "instance? check the configured URL)",
    )
