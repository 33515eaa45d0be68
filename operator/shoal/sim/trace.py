"""Arrival traces: a seeded synthetic generator (diurnal + bursts + Poisson) or a CSV file.

A trace is a list of `Arrival` sorted by time, in seconds from the start of the trace.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Arrival:
    time: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class TraceShape:
    """The synthetic trace's shape. Rates are requests per second.

    The diurnal part is one full day compressed into `period_seconds` (default: the whole
    trace): the rate is mean * (1 - amplitude * cos(2 pi t / period)), lowest at the start
    and end, highest in the middle. Bursts start as a Poisson process (`bursts_per_hour`)
    and multiply the rate by `burst_factor` for a duration drawn uniformly from
    [burst_min_seconds, burst_max_seconds], with a sharp onset: the case that needs the
    panic mode. Token counts are log-normal, clipped to the given bounds.
    """

    mean_rate: float = 20.0
    amplitude: float = 0.7
    period_seconds: float | None = None
    bursts_per_hour: float = 2.0
    burst_factor: float = 2.0
    burst_min_seconds: float = 60.0
    burst_max_seconds: float = 240.0
    prompt_median: float = 500.0
    prompt_sigma: float = 0.8
    prompt_bounds: tuple[int, int] = (16, 8192)
    output_median: float = 150.0
    output_sigma: float = 0.7
    output_bounds: tuple[int, int] = (1, 2048)


def constant(rate: float, seconds: float, *, seed: int, shape: TraceShape | None = None) -> list[Arrival]:
    """Poisson arrivals at a constant rate (no diurnal swing, no bursts)."""
    flat = TraceShape(mean_rate=rate, amplitude=0.0, bursts_per_hour=0.0)
    if shape is not None:
        flat = TraceShape(**{**shape.__dict__, "mean_rate": rate, "amplitude": 0.0, "bursts_per_hour": 0.0})
    return diurnal(seconds, seed=seed, shape=flat)


def diurnal(seconds: float, *, seed: int, shape: TraceShape | None = None) -> list[Arrival]:
    """Seeded synthetic arrivals over [0, seconds): same seed and shape, same trace."""
    shape = shape or TraceShape()
    rng = random.Random(seed)
    period = shape.period_seconds or seconds
    bursts: list[tuple[float, float]] = []
    if shape.bursts_per_hour > 0:
        t = rng.expovariate(shape.bursts_per_hour / 3600.0)
        while t < seconds:
            bursts.append((t, t + rng.uniform(shape.burst_min_seconds, shape.burst_max_seconds)))
            t += rng.expovariate(shape.bursts_per_hour / 3600.0)

    def rate(t: float) -> float:
        r = shape.mean_rate * (1.0 - shape.amplitude * math.cos(2.0 * math.pi * t / period))
        for start, end in bursts:
            if start <= t < end:
                return r * shape.burst_factor
        return r

    # Thinning (Lewis and Shedler): candidates at the highest rate, each kept with
    # probability rate(t) / highest.
    peak = shape.mean_rate * (1.0 + shape.amplitude) * max(1.0, shape.burst_factor if bursts else 1.0)
    arrivals: list[Arrival] = []
    t = 0.0
    lo_p, hi_p = shape.prompt_bounds
    lo_o, hi_o = shape.output_bounds
    while True:
        t += rng.expovariate(peak)
        if t >= seconds:
            break
        if rng.random() * peak > rate(t):
            continue
        prompt = int(round(rng.lognormvariate(math.log(shape.prompt_median), shape.prompt_sigma)))
        output = int(round(rng.lognormvariate(math.log(shape.output_median), shape.output_sigma)))
        arrivals.append(Arrival(t, min(hi_p, max(lo_p, prompt)), min(hi_o, max(lo_o, output))))
    return arrivals


class TraceError(ValueError):
    """The trace file cannot be used as written: tell the user which line and why."""


def read_csv(path: str | Path) -> list[Arrival]:
    """A CSV with a header `timestamp,prompt_tokens,output_tokens`.

    timestamp is in seconds (absolute, such as Unix time, or relative): the trace is
    shifted to start at 0 and sorted.
    """
    rows: list[Arrival] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        needed = {"timestamp", "prompt_tokens", "output_tokens"}
        if reader.fieldnames is None or not needed <= set(reader.fieldnames):
            raise TraceError(f"{path}: the header must name the columns timestamp, prompt_tokens, output_tokens")
        for line, row in enumerate(reader, start=2):
            try:
                rows.append(Arrival(float(row["timestamp"]), max(1, int(row["prompt_tokens"])), max(1, int(row["output_tokens"]))))
            except (TypeError, ValueError) as e:
                raise TraceError(f"{path}:{line}: {e}") from e
    if not rows:
        return []
    start = min(r.time for r in rows)
    return sorted((Arrival(r.time - start, r.prompt_tokens, r.output_tokens) for r in rows), key=lambda a: a.time)
