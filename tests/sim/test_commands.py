"""`shoal sim` end to end: manifests and traces in, a summary (and a plot) out."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shoal.sim import trace
from shoal.sim.commands import main

TIER = textwrap.dedent(
    """\
    apiVersion: shoal.dev/v1alpha1
    kind: ModelTier
    metadata:
      name: small
    spec:
      model:
        name: small
        source: hf://HuggingFaceTB/SmolLM2-135M-Instruct
      replicas:
        min: 1
        max: 8
      autoscaling:
        targetQueueDepth: 16
      cost:
        gpuHourUSD: 2.0
    """
)


@pytest.fixture
def tier_file(tmp_path: Path) -> Path:
    path = tmp_path / "tier.yaml"
    path.write_text(TIER)
    return path


def test_a_static_policy_for_half_an_hour_reports_its_gpu_hours_and_cost(tier_file, capsys):
    code = main(["-f", str(tier_file), "--trace", "constant", "--rate", "2", "--hours", "0.5", "--policy", "static:4", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (summary["gpu_hours"], summary["cost_usd"], summary["scale_events"]) == (2.0, 4.0, 0)
    assert summary["slo_attainment"] == 1.0


def test_a_csv_trace_is_shifted_to_start_at_zero_and_sorted(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("timestamp,prompt_tokens,output_tokens\n1700000010.5,300,20\n1700000000,100,10\n")
    assert trace.read_csv(path) == [trace.Arrival(0.0, 100, 10), trace.Arrival(10.5, 300, 20)]


def test_a_csv_trace_without_the_columns_is_refused_with_the_file_name(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("t,p\n1,2\n")
    with pytest.raises(trace.TraceError, match="timestamp, prompt_tokens, output_tokens"):
        trace.read_csv(path)


def test_a_csv_trace_drives_the_simulation(tier_file, tmp_path, capsys):
    path = tmp_path / "trace.csv"
    path.write_text("timestamp,prompt_tokens,output_tokens\n" + "".join(f"{i * 0.5},200,50\n" for i in range(600)))
    code = main(["-f", str(tier_file), "--trace", str(path), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert (code, summary["requests"], summary["spilled_requests"]) == (0, 600, 0)


def test_the_synthetic_trace_is_seeded_and_follows_its_mean_rate():
    shape = trace.TraceShape(mean_rate=10.0, amplitude=0.5, bursts_per_hour=0.0)
    first = trace.diurnal(3600.0, seed=3, shape=shape)
    assert first == trace.diurnal(3600.0, seed=3, shape=shape)
    assert first != trace.diurnal(3600.0, seed=4, shape=shape)
    assert 36000 * 0.97 <= len(first) <= 36000 * 1.03
    # One full cycle in the hour: the middle quarter-hours are busier than the first.
    quarters = [sum(1 for a in first if q * 900 <= a.time < (q + 1) * 900) for q in range(4)]
    assert quarters[1] > quarters[0] * 1.5 and quarters[2] > quarters[3] * 1.5


def test_the_plot_is_a_png(tier_file, tmp_path, capsys):
    out = tmp_path / "run.png"
    code = main(["-f", str(tier_file), "--trace", "constant", "--rate", "1", "--hours", "0.2", "--plot", str(out)])
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_plot_without_matplotlib_fails_with_one_clear_line(tier_file, tmp_path):
    # A fresh interpreter in which importing matplotlib fails, as on a core install.
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from shoal.sim.commands import main\n"
        f"sys.exit(main(['-f', {str(tier_file)!r}, '--hours', '0.1', '--plot', {str(tmp_path / 'x.png')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "shoal sim: --plot needs matplotlib, which is not installed: pip install 'shoal[sim]'\n"
    assert not (tmp_path / "x.png").exists()


def test_an_invalid_manifest_is_named_in_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(TIER.replace("targetQueueDepth: 16", "targetQueueDepth: -1"))
    with pytest.raises(SystemExit, match=r"bad.yaml: spec.autoscaling.targetQueueDepth: Input should be greater than 0"):
        main(["-f", str(path)])
