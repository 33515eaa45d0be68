"""The operator's one clock: every "now" the controller passes to plan/ comes from here.

Tests inject a `FakeClock` and move it by hand; nothing in the controller calls
`time.time()` or `datetime.now()` itself.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 18, 11, 6, 40, tzinfo=timezone.utc)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


def seconds(clock: Clock) -> float:
    """`clock`'s now as seconds since the epoch (the autoscaler's unit)."""
    return clock.now().timestamp()
