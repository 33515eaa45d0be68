"""The work queue: coalescing, one pass per key at a time, one retry rule."""

from __future__ import annotations

import asyncio

from shoal.controller.queue import Backoff, GiveUp, RetryAfter, WorkQueue


def test_a_burst_of_adds_runs_one_pass():
    runs: list[str] = []

    async def reconcile(key):
        runs.append(key)

    async def main():
        queue = WorkQueue(reconcile, workers=2)
        for _ in range(50):
            queue.add("a")
        queue.add("b")
        await queue.drain()

    asyncio.run(main())
    assert runs == ["a", "b"]


def test_a_key_added_while_its_pass_runs_runs_once_more_afterwards_never_twice_at_once():
    runs: list[str] = []
    overlaps: list[str] = []
    active: set[str] = set()

    async def main():
        queue: WorkQueue

        async def reconcile(key):
            if key in active:
                overlaps.append(key)
            active.add(key)
            runs.append(key)
            if len(runs) == 1:
                for _ in range(3):
                    queue.add(key)  # events arriving during the pass
            await asyncio.sleep(0)
            active.discard(key)

        queue = WorkQueue(reconcile, workers=4)
        queue.add("a")
        queue.start()
        while queue.pending or len(runs) < 2:
            await asyncio.sleep(0.001)
        await queue.stop()

    asyncio.run(main())
    assert runs == ["a", "a"]
    assert overlaps == []


def test_failures_back_off_doubling_and_a_success_resets_the_count():
    assert [Backoff(first=1, most=60).delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    outcomes = [RetryAfter("down"), RetryAfter("down"), None]
    delays: list[float] = []

    async def reconcile(key):
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    async def main():
        queue = WorkQueue(reconcile, backoff=Backoff(first=0.01, most=1))
        original = queue.add_after
        queue.add_after = lambda key, delay: (delays.append(delay), original(key, delay))  # type: ignore[method-assign]
        queue.add("a")
        queue.start()
        while outcomes:
            await asyncio.sleep(0.005)
        while queue.pending:
            await asyncio.sleep(0.005)
        failures = queue.failures("a")
        await queue.stop()
        return failures

    assert asyncio.run(main()) == 0
    assert delays == [0.01, 0.02]


def test_retry_after_with_a_delay_and_give_up_are_honoured():
    delays: list[float] = []

    async def main():
        async def reconcile(key):
            if key == "conflict":
                raise RetryAfter("conflict", delay=1)
            raise GiveUp("invalid spec")

        queue = WorkQueue(reconcile)
        queue.add_after = lambda key, delay: delays.append(delay)  # type: ignore[method-assign]
        queue.add("conflict")
        queue.add("invalid")
        await queue.drain()
        return queue.failures("conflict"), queue.failures("invalid")

    assert asyncio.run(main()) == (1, 0)
    assert delays == [1]
