"""The `shoal` command: render and crds without a cluster, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def shoal(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_render_prints_what_the_operator_applies():
    result = shoal("render", "-f", "examples/modeltier-small.yaml", "-n", "llm")
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("ConfigMap", "small-router"),
        ("Deployment", "small"),
        ("Service", "small"),
        ("PodDisruptionBudget", "small"),
    ]
    assert all(d["metadata"]["namespace"] == "llm" for d in docs)
    assert docs[1]["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}


def test_render_of_a_directory_includes_the_policy_entry_service():
    result = shoal("render", "-f", "examples")
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    entry = docs[-1]
    assert (entry["kind"], entry["metadata"]["name"]) == ("Service", "support-route")
    assert entry["spec"]["selector"] == {"app.kubernetes.io/name": "modeltier", "app.kubernetes.io/component": "inference", "shoal.dev/tier": "small"}


def test_invalid_spec_is_one_line_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: shoal.dev/v1alpha1\nkind: ModelTier\nmetadata: {name: t}\n"
        "spec:\n  model: {name: m, source: 'hf://a/b'}\n  replicas: {min: 3, max: 1}\n"
    )
    result = shoal("render", "-f", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("shoal: error: ")
    assert "ModelTier t: spec.replicas: Value error, replicas.min (3) must be less than or equal to replicas.max (1)" in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_file_and_broken_yaml_are_one_line_errors(tmp_path):
    missing = shoal("render", "-f", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"shoal: error: {tmp_path / 'nope.yaml'}: No such file or directory"
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed\n")
    result = shoal("render", "-f", str(broken))
    assert result.returncode == 2
    assert "is not valid YAML" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_command_is_a_usage_error():
    result = shoal("frobnicate")
    assert result.returncode == 2
    assert result.stderr.startswith("shoal: error: argument command: invalid choice: 'frobnicate'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_crds_writes_files_identical_to_the_committed_ones(tmp_path):
    result = shoal("crds", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for name in ("shoal.dev_modeltiers.yaml", "shoal.dev_routepolicies.yaml"):
        assert (tmp_path / name).read_text() == (ROOT / "crds" / name).read_text()


def test_version():
    result = shoal("version")
    assert result.stdout.strip() == "shoal 0.1.0"
