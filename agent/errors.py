"""One error hierarchy for the whole agent, and the process exit codes.

::

    AgentError                 exit 1 unless a subclass says otherwise
    ├── ConfigError            user-facing; carries every problem as "[section] key: message"; exit 2
    ├── AuthError              a token could not be obtained (bad secret, unknown tenant, ...)
    ├── RemoteError            a remote system answered with an error, or could not be reached
    │   ├── TransientError     worth retrying later: 429, 5xx, connection reset, timeout
    │   │   ├── NotSent        the request provably never left (refused, connect timeout, no token)
    │   │   │   └── InstancePaused  not sent: the ServiceNow instance's hourly rate limit is used up
    │   │   └── RateLimited    429; carries the server's Retry-After
    │   └── PermanentError     retrying the same request will not help: 400, 403, 404, 405, 422
    │       ├── NotFound       404
    │       ├── Forbidden      403 (ACL, missing RBAC role, ServiceNow data policy)
    │       ├── EditConflict   409 on an etag-guarded write: re-read and re-plan
    │       └── InvalidResponse  a success status with a body the agent cannot read
    ├── DataError              a value from a remote record that no request can carry (also a ValueError)
    │   └── HookFailed         the custom mapping hook raised or returned something unusable
    ├── SyncError              the engine refused to go on for one workspace
    │   └── SafetyValveTripped a safety check failed before any write; needs --force; exit 7
    ├── LockHeld               another agent holds the state database (or the lease)
    │   └── LeaseLost          this agent's lease ran out: it must stop writing anywhere
    └── StoreError             the state store refused a write (a bug or a lost lease: stops the cycle)
        ├── DuplicateKey       a second link for one ticket, a comment or journal entry linked twice
        ├── Fenced             a newer leader holds the lease: this agent's commit was refused
        └── StoreUnavailable   the state database cannot be reached (the next call reconnects)

Remote and data errors are about one incident: the engine records them as that incident's
failure and retries it with backoff. Anything else raised while syncing an incident is a bug
and stops the workspace's cycle with a traceback in the log.

Every exception text is safe to log: no ``Authorization`` header, token or secret is ever
put into a message (the HTTP layer builds messages from method, redacted URL, status and the
remote error code/message only).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum


class ExitCode(IntEnum):
    """What the command line returns (``--help`` lists them)."""

    OK = 0
    TRANSIENT = 1  # a transient or remote failure: try again later
    CONFIG = 2  # configuration or usage error
    RESYNC = 7  # a safety valve tripped, or the state needs attention (--force / resync)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as a shell reports it


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""

    exit_code: int = ExitCode.TRANSIENT


class ConfigError(AgentError):
    """The configuration is invalid. ``problems`` lists every problem found, not just the first."""

    exit_code = ExitCode.CONFIG

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


class NotSent(TransientError):
    """The request provably never reached the server (refused, connect timeout, no token).

    Safe to send again even when the request is not idempotent.
    """


class InstancePaused(NotSent):
    """A call to a ServiceNow instance whose hourly rate-limit window is used up was not sent
    (REFERENCE E.8): ``until`` is the Unix time the pause ends (see
    :mod:`agent.connectors.servicenow.pause`)."""

    def __init__(
        self, instance: str, method: str, url: str, until: float, now: float, until_text: str
    ) -> None:
        super().__init__(
            "servicenow",
            method,
            url,
            None,
            "RateLimitPaused",
            f"calls to ServiceNow instance {instance} are paused until {until_text} "
            "(its hourly rate limit is used up)",
        )
        self.instance = instance
        self.until = until
        self.until_text = until_text
        self.retry_after = max(0.0, until - now)


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


class EditConflict(PermanentError):
    """Someone else changed the record first: HTTP 409 on an etag-guarded write, or (Graph has no
    ETag, GRAPH.md D.4) a synced property found changed when re-read just before the write."""


class InvalidResponse(PermanentError):
    """A success status whose body the agent cannot read: a record or list without what every
    such record has (``code`` says which: ``InvalidIncident``, ...). A body that is no JSON at
    all is transient instead (a hibernating instance, a login page or a proxy, REFERENCE E.7)."""


class DataError(AgentError, ValueError):
    """A value taken from a remote record that no request can carry: an id that is no valid URL
    path segment, a line break or ``javascript:`` in a ServiceNow query value.

    Also a :class:`ValueError`, which is what it is; it fails only the incident it came from.
    """


class HookFailed(DataError):
    """The custom mapping hook raised or returned something unusable for one incident."""


class SyncError(AgentError):
    """The engine stopped a workspace's cycle on purpose."""


class SafetyValveTripped(SyncError):
    """A safety check over the plan failed before any write. Override with ``--force``."""

    exit_code = ExitCode.RESYNC

    def __init__(self, workspace: str, check: str, message: str) -> None:
        self.workspace = workspace
        self.check = check
        super().__init__(f"[{workspace}] safety valve '{check}': {message} (override with --force)")


class LockHeld(AgentError):
    """Another agent process holds the state database lock."""


class LeaseLost(LockHeld):
    """This agent's lease as leader ran out (or another agent took it): no remote write may
    start and no state may be committed; the agent goes back to standby."""


class StoreError(AgentError):
    """The state store refused an operation. Neither remote nor data: it stops the cycle."""


class DuplicateKey(StoreError):
    """A write would break a uniqueness rule of the store: one ServiceNow record linked to two
    incidents, or a Sentinel comment or journal entry linked twice. Nothing of it was written."""


class Fenced(StoreError):
    """A newer leader took the lease: this agent's commit was refused and it must stop writing."""

    def __init__(self, epoch: int, current: int) -> None:
        self.epoch = epoch
        self.current = current
        super().__init__(f"lease epoch {epoch} was superseded by epoch {current}: another agent leads now")


class StoreUnavailable(StoreError):
    """The state database could not be reached or dropped the connection; nothing was half-written
    (every write is one transaction) and the next call reconnects."""
