"""ServiceNow's wire records: what :mod:`agent.connectors.servicenow.client` makes of the JSON."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

# --- records --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnowRecord:
    """One Table API record in raw mode (``sysparm_display_value=false``).

    ``fields`` holds every returned field as a string; reference fields are flattened to their
    sys_id (``{"link":..,"value":..}`` -> value).
    """

    sys_id: str
    number: str
    fields: dict[str, str]
    mod_count: int
    updated_on: datetime
    updated_by: str

    def get(self, name: str) -> str:
        return self.fields.get(name, "")


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One ``sys_journal_field`` row."""

    sys_id: str
    element: str  # work_notes | comments
    element_id: str  # the incident sys_id
    value: str
    created_on: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class SnowUser:
    """One ``sys_user`` row, as much as the sync needs."""

    sys_id: str
    user_name: str
    email: str
    name: str


# --- time helpers ---------------------------------------------------------------------------

SNOW_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def parse_snow_time(value: str) -> datetime:
    """ServiceNow raw date-time (``YYYY-MM-DD HH:MM:SS``, always UTC) -> aware datetime."""
    return datetime.strptime(value, SNOW_TIME_FORMAT).replace(tzinfo=UTC)


def format_snow_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(SNOW_TIME_FORMAT)
