"""One typed converter per kind of key: text from the ini -> a value, or :class:`ValueError` with a
message for a person (the loader prefixes ``[section] key:``)."""

from __future__ import annotations

import difflib
import keyword
import re
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

# --- Converters: str -> value, raising ValueError(message for the user) -----------------------

DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$", re.IGNORECASE | re.ASCII)
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
BOOLS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}
GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(?:-preview)?$")
SECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SNOW_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RESOURCE_GROUP = re.compile(r"^[-\w.()]{1,90}$")
WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
UPN = re.compile(r"^[^@\s]+@[^@\s]+$")
DOMAIN = re.compile(r"^(?:global|[0-9a-f]{32})$")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def human_duration(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= UNIT_SECONDS[unit] and seconds % UNIT_SECONDS[unit] == 0:
            return f"{seconds / UNIT_SECONDS[unit]:g}{unit}"
    return f"{seconds:g}s"


def duration(low: float, high: float) -> Callable[[str], float]:
    def convert(text: str) -> float:
        match = DURATION.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a duration (use e.g. 90, 90s, 5m, 24h or 1d)")
        seconds = float(match[1]) * UNIT_SECONDS[match[2].lower()]
        if not low <= seconds <= high:
            raise ValueError(f"{text} is out of range ({human_duration(low)} to {human_duration(high)})")
        return seconds

    return convert


def integer(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if not low <= number <= high:
            raise ValueError(f"{number} is out of range ({low} to {high})")
        return number

    return convert


def boolean(text: str) -> bool:
    try:
        return BOOLS[text.lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not a boolean (use true or false)") from None


def choice(*allowed: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        for value in allowed:
            if value.lower() == text.lower():
                return value
        raise ValueError(f"{text!r} is not one of {', '.join(allowed)}{did_you_mean(text, allowed)}")

    return convert


def ratio(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{text} is out of range (0 to 1)")
    return number


def https_url(text: str) -> str:
    """``https://host[:port]``; a bare host gets ``https://``. Plain http is refused (TLS is always on)."""
    parts = urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme.lower() != "https":
        raise ValueError(f"{text!r} must be an https:// URL (TLS is always on)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    if not parts.hostname or parts.username or parts.password:
        raise ValueError(f"{text!r} must be https://host[:port] without credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{text!r} must be https://host[:port] without a path, query or fragment")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{host}" + (f":{port}" if port is not None else "")


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    if (
        not sep
        or not host
        or any(c.isspace() for c in host)
        or not (port.isascii() and port.isdigit())
        or int(port) > 65535
    ):
        raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:9464)")
    return host, int(port)


def entry_point(text: str) -> str:
    module, sep, function = text.partition(":")
    names = [*module.split("."), function]
    if not sep or not all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
        raise ValueError(f"{text!r} is not package.module:function")
    return text


def guid(text: str) -> str:
    if not GUID.match(text):
        raise ValueError(f"{text!r} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    return text.lower()


def pattern(regex: re.Pattern[str], what: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if not regex.match(text):
            raise ValueError(f"{text!r} is not {what}")
        return text

    return convert


def plain(text: str) -> str:
    return text


def label_list(text: str) -> tuple[str, ...]:
    """Comma-separated Sentinel label names (case-sensitive), each once."""
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def did_you_mean(word: str, candidates: Iterable[str], fmt: str = "{}") -> str:
    options = list(candidates)
    same_case = [c for c in options if c.lower() == word.lower()]
    close = same_case or difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {fmt.format(close[0])}?)" if close else ""
