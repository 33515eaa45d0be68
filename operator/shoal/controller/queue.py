"""A work queue of objects to reconcile: each key at most once at a time, bursts coalesced.

Watch events only say "look at this object again": they add its key. A key that is already
waiting is not added twice, and a key added while its reconcile runs is run once more
afterwards, so every change is seen by a pass that started after it (level-triggered), and
a burst of events (pods of a new tier starting) costs one pass, not one per event.

One retry rule for every failure: a failed pass is retried after `Backoff.delay(failures)`
seconds (doubling from `first` up to `most`), unless the reconcile says when (`RetryAfter`)
or that retrying cannot help (`GiveUp`); a success resets the count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

log = logging.getLogger("shoal.controller")


class RetryAfter(Exception):
    """Run this key's reconcile again after `delay` seconds (a conflict, an outage)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class GiveUp(Exception):
    """Retrying cannot help (the user must change the spec, or the namespace is going);
    the key runs again on its next watch event."""


@dataclass(frozen=True)
class Backoff:
    first: float = 1.0
    most: float = 60.0

    def delay(self, failures: int) -> float:
        return min(self.most, self.first * (2 ** max(0, failures - 1)))


class WorkQueue:
    def __init__(
        self,
        reconcile: Callable[[Hashable], Awaitable[None]],
        *,
        workers: int = 8,
        backoff: Backoff = Backoff(),
    ) -> None:
        self._reconcile = reconcile
        self._workers = workers
        self._backoff = backoff
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._waiting: set[Hashable] = set()
        self._running: set[Hashable] = set()
        self._again: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, key: Hashable) -> None:
        """Reconcile `key` soon (once, however often it is added before it runs)."""
        if key in self._running:
            self._again.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Hashable, delay: float) -> None:
        """Reconcile `key` in `delay` seconds (an earlier pending timer wins)."""
        if key in self._timers:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(key, None)
            self.add(key)

        self._timers[key] = loop.call_later(delay, fire)

    def forget(self, key: Hashable) -> None:
        """Drop the retry state of a deleted object."""
        self._failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    @property
    def pending(self) -> int:
        return len(self._waiting) + len(self._running) + len(self._timers)

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"reconcile worker {i}") for i in range(self._workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    async def drain(self) -> None:
        """Run queued keys in this task until none is waiting (tests, without workers)."""
        while self._waiting:
            await self._one(self._queue.get_nowait())

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            await self._one(key)

    async def _one(self, key: Hashable) -> None:
        self._waiting.discard(key)
        self._running.add(key)
        try:
            await self._reconcile(key)
        except GiveUp as exc:
            self._failures.pop(key, None)
            log.info("%s: %s", key, exc)
        except RetryAfter as exc:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = exc.delay if exc.delay is not None else self._backoff.delay(failures)
            log.warning("%s: %s; retrying in %.0f s", key, exc, delay)
            self.add_after(key, delay)
        except Exception:  # noqa: BLE001 - a bug must not stop the worker; the key is retried
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = self._backoff.delay(failures)
            log.exception("%s: reconcile failed; retrying in %.0f s", key, delay)
            self.add_after(key, delay)
        else:
            self._failures.pop(key, None)
        finally:
            self._running.discard(key)
            if key in self._again:
                self._again.discard(key)
                self.add(key)
