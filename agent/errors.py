"""One error hierarchy for the whole agent.

::

    AgentError
    ├── ConfigError            user-facing; carries every problem as "[section] key: message"
    ├── AuthError              a token could not be obtained (bad secret, unknown tenant, ...)
    ├── RemoteError            a remote system answered with an error, or could not be reached
    │   ├── TransientError     worth retrying later: 429, 5xx, connection reset, timeout
    │   │   └── RateLimited    429; carries the server's Retry-After
    │   └── PermanentError     retrying the same request will not help: 400, 403, 404, 405, 422
    │       ├── NotFound       404
    │       ├── Forbidden      403 (ACL, missing RBAC role, ServiceNow data policy)
    │       └── Conflict       409 on an etag-guarded write: re-read and re-plan
    ├── SyncError              the engine refused to go on for one workspace
    │   └── SafetyValveTripped a safety check failed before any write; needs --force
    └── LockHeld               another agent holds the state database

Every exception text is safe to log: no ``Authorization`` header, token or secret is ever
put into a message (the HTTP layer builds messages from method, redacted URL, status and the
remote error code/message only).
"""

from __future__ import annotations

from collections.abc import Iterable


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""

    exit_code: int = 1


class ConfigError(AgentError):
    """The configuration is invalid. ``problems`` lists every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems) or "invalid configuration")


class AuthError(AgentError):
    """A token could not be obtained. ``code`` is e.g. ``invalid_client`` or an AADSTS code."""

    def __init__(self, system: str, message: str, code: str | None = None) -> None:
        self.system = system
        self.code = code
        super().__init__(f"{system}: {message}")


class RemoteError(AgentError):
    """A remote call failed.

    ``system`` is ``entra``, ``sentinel``, ``graph`` or ``servicenow``; ``status`` is the HTTP
    status or ``None`` for a connection-level failure; ``code``/``detail`` come from the error
    body.
    """

    def __init__(
        self,
        system: str,
        method: str,
        url: str,
        status: int | None,
        code: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.system = system
        self.method = method
        self.url = url
        self.status = status
        self.code = code
        self.detail = detail
        where = f"{system} {method} {url}"
        what = f"HTTP {status}" if status is not None else "connection failed"
        extra = ": ".join(x for x in (code, detail) if x)
        super().__init__(f"{where}: {what}" + (f" ({extra})" if extra else ""))


class TransientError(RemoteError):
    """Retrying later may succeed (429, 5xx, timeouts, dropped connections)."""


class RateLimited(TransientError):
    """HTTP 429. ``retry_after`` is the server's ``Retry-After`` in seconds, if it sent one."""

    def __init__(self, *args: object, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class PermanentError(RemoteError):
    """Retrying the same request will not help (validation, ACL, missing record)."""


class NotFound(PermanentError):
    """HTTP 404: the record does not exist or an ACL hides it."""


class Forbidden(PermanentError):
    """HTTP 403: ACL, missing role, or a ServiceNow data policy."""


class Conflict(PermanentError):
    """HTTP 409 on an etag-guarded write: someone else changed the record first."""


class SyncError(AgentError):
    """The engine stopped a workspace's cycle on purpose."""


class SafetyValveTripped(SyncError):
    """A safety check over the plan failed before any write. Override with ``--force``."""

    exit_code = 7

    def __init__(self, workspace: str, check: str, message: str) -> None:
        self.workspace = workspace
        self.check = check
        super().__init__(f"[{workspace}] safety valve '{check}': {message} (override with --force)")


class LockHeld(AgentError):
    """Another agent process holds the state database lock."""

    exit_code = 1
