"""What a simulation run cost and how well it served.

Definitions (also in `shoal sim --help`):
- GPU-hours: for every pod, GPUs x the time from its creation (the GPU is allocated while
  the pod starts and loads the model) to its deletion, within the trace window [0, end].
- cost: GPU-hours x the tier's cost.gpuHourUSD.
- TTFT: time to first token = queue wait + prefill, on whichever tier served the request.
- SLO attainment: the share of 1-minute windows (by arrival time, windows with at least
  one request) whose p95 TTFT is at most the target. The per-request share under the target
  is reported too.
- queue wait: arrival to the start of prefill.
- scale events: changes of a tier's replica count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .fleet import Outcome

WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Summary:
    requests: int
    gpu_hours: float
    cost_usd: float
    slo_ttft_p95_seconds: float
    slo_attainment: float  # share of 1-minute windows meeting the target
    requests_within_slo: float
    ttft_p50_seconds: float
    ttft_p95_seconds: float
    ttft_p99_seconds: float
    queue_wait_mean_seconds: float
    queue_wait_p95_seconds: float
    spilled_requests: int
    scale_events: int
    peak_replicas: int
    gpu_hours_by_tier: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def summarize(outcome: Outcome, slo_ttft_p95_seconds: float) -> Summary:
    end = outcome.end
    gpu_hours_by_tier: dict[str, float] = {t.name: 0.0 for t in outcome.tiers}
    for pod in outcome.pods:
        stop = min(end, pod.ended if pod.ended is not None else end)
        if stop > pod.created:
            gpu_hours_by_tier[pod.tier] += (stop - pod.created) * pod.gpus / 3600.0
    price = {t.name: t.gpu_hour_usd for t in outcome.tiers}
    done = [r for r in outcome.requests if r.first_token >= 0]
    ttfts = [r.first_token - r.arrival for r in done]
    waits = [r.prefill_start - r.arrival for r in done]
    windows: dict[int, list[float]] = {}
    for r in done:
        windows.setdefault(int(r.arrival // WINDOW_SECONDS), []).append(r.first_token - r.arrival)
    good = sum(1 for v in windows.values() if percentile(v, 95) <= slo_ttft_p95_seconds)
    peak = max((sum(s[1]) for s in outcome.samples), default=0)
    return Summary(
        requests=len(outcome.requests),
        gpu_hours=round(sum(gpu_hours_by_tier.values()), 3),
        cost_usd=round(sum(h * price[name] for name, h in gpu_hours_by_tier.items()), 2),
        slo_ttft_p95_seconds=slo_ttft_p95_seconds,
        slo_attainment=round(good / len(windows), 4) if windows else 1.0,
        requests_within_slo=round(sum(1 for t in ttfts if t <= slo_ttft_p95_seconds) / len(ttfts), 4) if ttfts else 1.0,
        ttft_p50_seconds=round(percentile(ttfts, 50), 3),
        ttft_p95_seconds=round(percentile(ttfts, 95), 3),
        ttft_p99_seconds=round(percentile(ttfts, 99), 3),
        queue_wait_mean_seconds=round(sum(waits) / len(waits), 3) if waits else 0.0,
        queue_wait_p95_seconds=round(percentile(waits, 95), 3),
        spilled_requests=sum(1 for r in outcome.requests if r.spilled),
        scale_events=len(outcome.scale_events),
        peak_replicas=peak,
        gpu_hours_by_tier={k: round(v, 3) for k, v in gpu_hours_by_tier.items()},
    )


def format_summary(summary: Summary) -> str:
    lines = [
        f"requests                {summary.requests}",
        f"GPU-hours               {summary.gpu_hours:.2f}" + (
            "  (" + ", ".join(f"{k} {v:.2f}" for k, v in summary.gpu_hours_by_tier.items()) + ")"
            if len(summary.gpu_hours_by_tier) > 1 else ""),
        f"cost                    ${summary.cost_usd:.2f}",
        f"SLO attainment          {summary.slo_attainment:.2%} of 1-minute windows with p95 TTFT <= {summary.slo_ttft_p95_seconds:g}s",
        f"requests within SLO     {summary.requests_within_slo:.2%}",
        f"TTFT p50/p95/p99        {summary.ttft_p50_seconds:.3f}s / {summary.ttft_p95_seconds:.3f}s / {summary.ttft_p99_seconds:.3f}s",
        f"queue wait mean/p95     {summary.queue_wait_mean_seconds:.3f}s / {summary.queue_wait_p95_seconds:.3f}s",
        f"spilled requests        {summary.spilled_requests}",
        f"scale events            {summary.scale_events}",
        f"peak replicas           {summary.peak_replicas}",
    ]
    return "\n".join(lines)


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed: install the sim extra."""


@dataclass(frozen=True)
class Series:
    """What a plot needs from a run, small enough to keep for many runs."""

    load: tuple[tuple[float, float], ...]  # (hours, requests/s) per minute of arrivals
    replicas: tuple[tuple[float, int], ...]  # (hours, replicas of all tiers)
    ttft_p95: tuple[tuple[float, float], ...]  # (hours, p95 TTFT of the minute's arrivals)


def series(outcome: Outcome) -> Series:
    counts: dict[int, int] = {}
    windows: dict[int, list[float]] = {}
    for r in outcome.requests:
        minute = int(r.arrival // WINDOW_SECONDS)
        counts[minute] = counts.get(minute, 0) + 1
        if r.first_token >= 0:
            windows.setdefault(minute, []).append(r.first_token - r.arrival)
    return Series(
        load=tuple((m / 60.0, counts[m] / WINDOW_SECONDS) for m in sorted(counts)),
        replicas=tuple((t / 3600.0, sum(n)) for t, n, _ in outcome.samples),
        ttft_p95=tuple((m / 60.0, percentile(windows[m], 95)) for m in sorted(windows)),
    )


def write_plot(runs: dict[str, Series], slo_ttft_p95_seconds: float, path: str) -> None:
    """Load (requests/s per minute, of the first run), replicas, and p95 TTFT per minute,
    one line per run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'shoal[sim]'") from e

    fig, (ax_load, ax_rep, ax_ttft) = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True)
    first = next(iter(runs.values()))
    ax_load.plot([h for h, _ in first.load], [v for _, v in first.load], color="black", linewidth=0.8)
    ax_load.set_ylabel("load (req/s)")
    for label, run in runs.items():
        ax_rep.step([h for h, _ in run.replicas], [n for _, n in run.replicas], where="post", linewidth=0.9, label=label)
        ax_ttft.plot([h for h, _ in run.ttft_p95], [v for _, v in run.ttft_p95], linewidth=0.8, label=label)
    ax_rep.set_ylabel("replicas")
    ax_rep.legend(loc="upper left", fontsize=8, ncol=min(5, len(runs)))
    ax_ttft.axhline(slo_ttft_p95_seconds, color="red", linestyle="--", linewidth=0.8)
    ax_ttft.set_yscale("log")
    ax_ttft.set_ylabel("p95 TTFT per minute (s)")
    ax_ttft.set_xlabel("time (hours)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
