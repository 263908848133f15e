"""Reading one section: typed keys, unknown keys with "did you mean", paths relative to the ini,
secrets from ``<name>_env`` / ``<name>_file`` / ``<name>``, and every problem collected."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from agent.config.convert import VARIABLE, did_you_mean
from agent.config.model import Secret

T = TypeVar("T")

# --- Reading one section ----------------------------------------------------------------------


class Report:
    """Collects problems and warnings while the whole file is read."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, title: str, key: str | None, message: str) -> None:
        self.problems.append(f"[{title}] {key}: {message}" if key else f"[{title}]: {message}")

    def warn(self, title: str, key: str | None, message: str) -> None:
        self.warnings.append(f"[{title}] {key}: {message}" if key else f"[{title}]: {message}")


class Section:
    """One section's raw values plus typed getters; unknown keys are reported on creation."""

    def __init__(
        self,
        report: Report,
        title: str,
        raw: Mapping[str, str],
        known: Iterable[str],
        folder: Path,
        environ: Mapping[str, str],
    ) -> None:
        self.report = report
        self.title = title
        self.raw = dict(raw)
        self.folder = folder
        self.environ = environ
        self.broken: set[str] = set()
        known = tuple(known)
        for key, value in self.raw.items():
            if key not in known:
                self.problem(key, "unknown key" + did_you_mean(key, known))
            elif "\n" in value.strip():
                # An indented line continues the previous value in ini syntax, which swallows keys.
                self.problem(key, "value spans several lines (is the next line indented by mistake?)")
                self.broken.add(key)

    def problem(self, key: str | None, message: str) -> None:
        self.report.problem(self.title, key, message)

    def warn(self, key: str | None, message: str) -> None:
        self.report.warn(self.title, key, message)

    def is_set(self, *keys: str) -> bool:
        """True when any of ``keys`` has a non-empty value (even one already reported as invalid)."""
        return any((self.raw.get(key) or "").strip() for key in keys)

    def text(self, key: str) -> str | None:
        """The stripped value, or None when the key is absent, empty or already reported."""
        if key in self.broken:
            return None
        return (self.raw.get(key) or "").strip() or None

    def get(self, key: str, convert: Callable[[str], T], default: T) -> T:
        """The converted value, ``default`` when absent or empty (or invalid, after reporting it)."""
        value = self.text(key)
        if value is None:
            return default
        try:
            return convert(value)
        except ValueError as exc:
            self.problem(key, str(exc))
            return default

    def optional(self, key: str, convert: Callable[[str], T]) -> T | None:
        return self.get(key, convert, None)

    def required(self, key: str, convert: Callable[[str], T], placeholder: T) -> T:
        """The converted value; a missing one is a problem (``placeholder`` is then returned)."""
        if not self.is_set(key):
            self.problem(key, "required")
            return placeholder
        return self.get(key, convert, placeholder)

    def path(self, key: str) -> Path | None:
        """A path relative to the ini file's folder, or None when empty."""
        return self.optional(key, self.resolve)

    def readable_file(self, key: str, private: bool = False) -> Path | None:
        """A path that must name a readable file; ``private`` warns when group/others may read it."""
        path = self.path(key)
        if path is None:
            return None
        if not path.is_file() or not os.access(path, os.R_OK):
            self.problem(key, f"{path} is not a readable file")
            return None
        if private:
            self._check_private(key, path)
        return path

    def secret(self, base: str) -> Secret | None:
        """Read ``<base>_env`` / ``<base>_file`` / ``<base>``; two forms set is a problem."""
        forms = [key for key in (f"{base}_env", f"{base}_file", base) if self.text(key) is not None]
        if len(forms) > 1:
            self.problem(base, f"set only one of {', '.join(forms)}")
            return None
        if not forms:
            return None
        key = forms[0]
        value = self.text(key) or ""
        if key.endswith("_env"):
            return self._secret_from_env(key, value)
        if key.endswith("_file"):
            expanded = self._expand(key, value)
            return self._secret_from_file(key, self.resolve(expanded)) if expanded else None
        return Secret(value)

    def _expand(self, key: str, text: str) -> str | None:
        """``$NAME`` / ``${NAME}`` from the environment, e.g. systemd's ``$CREDENTIALS_DIRECTORY``."""
        unset = [m[1] or m[2] for m in VARIABLE.finditer(text) if (m[1] or m[2]) not in self.environ]
        if unset:
            systemd = "CREDENTIALS_DIRECTORY" in unset
            hint = " (systemd sets it for a unit with LoadCredential=)" if systemd else ""
            self.problem(key, f"environment variable {unset[0]} is not set{hint}")
            return None
        return VARIABLE.sub(lambda m: self.environ[m[1] or m[2]], text)

    def _secret_from_env(self, key: str, variable: str) -> Secret | None:
        value = self.environ.get(variable)
        if value is None:
            self.problem(key, f"environment variable {variable} is not set")
            return None
        if not value:
            self.problem(key, f"environment variable {variable} is empty")
            return None
        return Secret(value)

    def _secret_from_file(self, key: str, path: Path) -> Secret | None:
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            self.problem(key, f"cannot read {path}: {reason}")
            return None
        if not value:
            self.problem(key, f"{path} is empty")
            return None
        self._check_private(key, path)
        return Secret(value)

    def _check_private(self, key: str, path: Path) -> None:
        if os.name == "posix" and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            self.warn(key, f"{path} is readable by group/others; restrict it with chmod 600")

    def resolve(self, text: str) -> Path:
        """``text`` as a path, relative to the ini file's folder."""
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.folder / path
