"""The import contracts in pyproject.toml hold (controller -> kube -> plan, render -> api)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint) if lint.exists() else "lint-imports"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 5 kept, 0 broken." in result.stdout


def test_kopf_is_imported_only_by_the_controller():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "operator" / "shoal").rglob("*.py")
        if "controller" not in p.parts and "import kopf" in p.read_text()
    ]
    assert offenders == []
