"""Shared fixtures for the unit tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


@pytest.fixture
def small_tier_body() -> dict[str, Any]:
    body = copy.deepcopy(load_example("modeltier-small.yaml")[0])
    body["metadata"].update({"namespace": "llm", "uid": "0000-1111", "generation": 3})
    # A tier that already serves its checkpoint (promoted earlier).
    body["status"] = {"servingCheckpoint": body["spec"]["model"]["checkpoint"]}
    # The example's evaluation refers to a ConfigMap these unit tests do not observe; the
    # rollout has tests of its own (tests/plan/test_rollout.py, e2e/test_rollout.py).
    body["spec"].pop("rollout")
    return body


@pytest.fixture
def large_tier_body() -> dict[str, Any]:
    body = copy.deepcopy(load_example("modeltier-large.yaml")[0])
    body["metadata"].update({"namespace": "llm", "uid": "2222-3333", "generation": 1})
    body["status"] = {"servingCheckpoint": body["spec"]["model"]["source"]}
    return body


@pytest.fixture
def policy_body() -> dict[str, Any]:
    body = copy.deepcopy(load_example("routepolicy.yaml")[0])
    body["metadata"].update({"namespace": "llm", "uid": "4444-5555", "generation": 2})
    return body
