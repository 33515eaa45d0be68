"""CPU cost of the in-process parts of a routing decision, per request.

    python benchmarks/router/decision_cost.py

Trains the classifier on examples/router/labelled.jsonl, then times (best of 5 runs of
2000 calls each): classifier prediction on a short and on a long prompt, feature
extraction, the full decision with rules and classifier, and body parsing.
"""

from __future__ import annotations

import json
import timeit
from pathlib import Path

from shoal.api.routepolicy import RoutePolicySpec
from shoal.router.classifier import read_labelled, train
from shoal.router.decision import Policy, decide, request_features
from shoal.router.server import parse_body

REPO = Path(__file__).resolve().parents[2]


def per_call_us(fn, number: int = 2000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    model = train(read_labelled(REPO / "examples" / "router" / "labelled.jsonl"), classes=["small", "medium", "frontier"])
    policy = Policy.from_route_policy(
        RoutePolicySpec.model_validate(
            {
                "tiers": [
                    {"name": "small", "modelTierRef": {"name": "a"}},
                    {"name": "medium", "modelTierRef": {"name": "b"}},
                    {"name": "frontier", "external": {"url": "https://api.example.com/v1", "model": "m"}},
                ],
                "rules": [
                    {"name": "long", "match": {"minPromptTokens": 4000}, "tier": "medium"},
                    {"name": "proofs", "match": {"regex": [r"\bprove\b"], "keywords": ["theorem"]}, "tier": "frontier"},
                ],
                "classifier": {"mode": "enabled", "configMapRef": {"name": "c", "key": "k"}},
            }
        )
    )
    short = "Write a Python function that merges two sorted lists."
    long = ("Summarise the following report for the board, keeping every number. " * 60)[:4000]
    raw = json.dumps({"model": "x", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": short}], "max_tokens": 64}).encode()
    body = parse_body(raw, "chat")
    features = request_features(body)
    rows = [
        ("classifier, 9-word prompt", per_call_us(lambda: model.predict(short))),
        ("classifier, 4000-char prompt", per_call_us(lambda: model.predict(long), number=200)),
        ("parse body (JSON + checks)", per_call_us(lambda: parse_body(raw, "chat"))),
        ("request features", per_call_us(lambda: request_features(body))),
        ("decide: rules + classifier", per_call_us(lambda: decide(policy, features, classify=model.predict))),
    ]
    print("| step | us per call |\n|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
