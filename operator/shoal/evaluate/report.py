"""The evaluation's two outputs: a table for people (stdout) and a verdict for programs.

The verdict is an ``EvaluationRecord`` (api/modeltier.py) serialised to camelCase JSON,
so the operator reads the Job's termination message with
``EvaluationRecord.model_validate_json(message)`` and stores it as
``status.lastEvaluation`` after adding the Job name. Kubernetes keeps at most 4096 bytes
of a termination message; ``termination_message`` rounds numbers to 4 decimals and, if
that is still too long, drops the echoed thresholds, then shortens the message, so the
JSON always parses. The per-item outcomes (api/outcomes.py) ride beside the record under
"outcomes" when they fit; they are the first thing left out when the message is too long.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from shoal.api.modeltier import EvaluationRecord, MetricResult, ThresholdSpec
from shoal.api.outcomes import MESSAGE_KEY, ItemOutcomes

TERMINATION_MESSAGE_LIMIT_BYTES = 4096


def _round(record: EvaluationRecord) -> EvaluationRecord:
    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    metrics = [
        m.model_copy(update={k: r(getattr(m, k)) for k in ("value", "lower", "upper", "baseline", "delta_lower", "delta_upper")})
        for m in record.metrics
    ]
    return record.model_copy(update={"metrics": metrics})


def termination_message(record: EvaluationRecord, limit: int = TERMINATION_MESSAGE_LIMIT_BYTES, outcomes: ItemOutcomes | None = None) -> str:
    """Compact JSON of ``record`` (with ``outcomes`` when they fit) in at most ``limit`` bytes."""
    record = _round(record)
    text = json.dumps(record.to_wire(), separators=(",", ":"))
    if outcomes is not None:
        with_outcomes = json.dumps({**record.to_wire(), MESSAGE_KEY: outcomes.to_wire()}, separators=(",", ":"))
        if len(with_outcomes.encode()) <= limit:
            return with_outcomes
    if len(text.encode()) <= limit:
        return text
    record = record.model_copy(update={"thresholds": []})
    text = json.dumps(record.to_wire(), separators=(",", ":"))
    while len(text.encode()) > limit and record.message:
        keep = max(0, len(record.message) - (len(text.encode()) - limit) - 4)
        record = record.model_copy(update={"message": record.message[:keep] + "..." if keep else None})
        text = json.dumps(record.to_wire(), separators=(",", ":"))
    return text


def _interval(lower: float | None, upper: float | None, signed: bool = False) -> str:
    if lower is None or upper is None:
        return ""
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f"[{fmt.format(lower)}, {fmt.format(upper)}]"


def _threshold_text(name: str, thresholds: Sequence[ThresholdSpec]) -> str:
    parts = []
    for t in thresholds:
        if t.metric != name:
            continue
        if t.min is not None:
            parts.append(f"min {t.min:g}")
        if t.max is not None:
            parts.append(f"max {t.max:g}")
    return ", ".join(parts)


def render_table(
    metrics: Sequence[MetricResult],
    thresholds: Sequence[ThresholdSpec],
    confidence_level: float,
    paired_level: float | None = None,
) -> str:
    level = f"{confidence_level * 100:g}%"
    paired = f"{(paired_level or confidence_level) * 100:g}%"
    header = ["metric", "value", f"{level} interval", "serving", f"difference {paired} interval", "threshold"]
    rows = [header]
    for m in metrics:
        rows.append([
            m.name,
            f"{m.value:.3f}",
            _interval(m.lower, m.upper),
            "" if m.baseline is None else f"{m.baseline:.3f}",
            _interval(m.delta_lower, m.delta_upper, signed=True),
            _threshold_text(m.name, thresholds),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def render_report(
    record: EvaluationRecord,
    *,
    confidence_level: float,
    interval_method: str,
    errors: int = 0,
    started: datetime | None = None,
    finished: datetime | None = None,
    paired_level: float | None = None,
) -> str:
    lines = [
        f"shoal eval: {record.checkpoint}",
        f"items: {record.items}   dataset: {record.dataset_digest}   intervals: {interval_method}, {confidence_level * 100:g}%"
        + (f"   failed requests: {errors}" if errors else ""),
    ]
    if started and finished:
        lines.append(f"took {(finished - started).total_seconds():.1f} s")
    lines += ["", render_table(record.metrics, record.thresholds, confidence_level, paired_level), ""]
    lines.append(f"verdict: {record.verdict}")
    if record.message:
        lines.append(record.message)
    return "\n".join(lines)
