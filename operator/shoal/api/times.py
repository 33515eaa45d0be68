"""The one RFC 3339 format Shoal writes: UTC, whole seconds, a trailing Z.

Status times (condition transitions, the autoscaler's last scale) and Event timestamps all
use it, so two writers never disagree about the same instant by a microseconds suffix.
"""

from __future__ import annotations

from datetime import datetime, timezone


def rfc3339(when: datetime | float) -> str:
    """`when` (an aware datetime, or seconds since the epoch) as 2026-11-18T11:06:40Z."""
    if not isinstance(when, datetime):
        when = datetime.fromtimestamp(when, tz=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    """The inverse of `rfc3339`; also reads fractional seconds and numeric offsets."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
