"""What learning from a `uri` dataset (no prompts: the level alone) costs against learning
over the evaluation's prompts (router/learning.py), on RouteLLM's GSM8K outcomes.

Half the prompts (even lines) train the model with `shoal router train` (outcome lines,
target share small=0.5); the other half is split into an evaluation dataset and the traffic.
The serving checkpoint's outcomes are the weak model's; a promoted checkpoint loses a
fraction of the items it answered (or fixes a fraction of those it failed). Each is learned
three ways: over the evaluation's prompts, over the model's training sample (helpsLogits),
and at the intercept alone (a model file without the sample). Printed: the share of the
traffic kept on the small tier at the same threshold, before and after each, and the
intercept's shift.

    python benchmarks/routing/learn_without_prompts.py --data DIR/gsm8k.jsonl

Two evaluation datasets: 200 random items of the held-out half, and its 200 longest
prompts (an evaluation harder than the traffic, where the training sample's logits stand
in worst for the evaluation's).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from shoal.router.classifier import DifficultyModel
from shoal.router.learning import recalibrate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="RouteLLM-style JSONL: prompt, weak_correct, strong_correct")
    args = parser.parse_args()
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    train, held = rows[0::2], rows[1::2]
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "train.jsonl", Path(tmp) / "model.json"
        data.write_text("".join(json.dumps({"prompt": r["prompt"], "outcomes": {"small": r["weak_correct"], "large": r["strong_correct"]}}) + "\n" for r in train))
        command = [sys.executable, "-m", "shoal.cli", "router", "train", "--data", str(data), "--out", str(out), "--tiers", "small,large", "--target-shares", "small=0.5"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        model = json.loads(out.read_text())
    older = {k: v for k, v in model.items() if k != "helpsLogits"}
    order = list(range(len(held)))
    random.Random(0).shuffle(order)
    longest = sorted(range(len(held)), key=lambda i: -len(held[i]["prompt"]))
    for name, chosen in (("random", order[:200]), ("longest", longest[:200])):
        chosen_set = set(chosen)
        evaluation = [held[i] for i in chosen]
        traffic = [held[i]["prompt"] for i in range(len(held)) if i not in chosen_set]
        prompts = [r["prompt"] for r in evaluation]
        serving = [bool(r["weak_correct"]) for r in evaluation]

        def share(m: dict) -> float:
            parsed = DifficultyModel.from_json(m)
            return sum(parsed.tier_for(p) == "small" for p in traffic) / len(traffic)

        print(f"evaluation: {name} 200 of the held-out half; traffic: the other {len(traffic)}; kept small before: {share(model):.3f}")
        print("  candidate                 change   kept small (intercept shift): prompts / sample / intercept alone")
        for label, flip in (("loses 3% of its passes", 0.03), ("loses 10%", 0.1), ("loses 25%", 0.25), ("loses 50%", 0.5), ("fixes 10% of its fails", -0.1), ("fixes 50%", -0.5)):
            rng = random.Random(1)
            if flip > 0:
                candidate = [ok and rng.random() >= flip for ok in serving]
            else:
                candidate = [ok or rng.random() < -flip for ok in serving]
            cells, change = [], 0.0
            for m, p in ((model, prompts), (model, None), (older, None)):
                learned, summary = recalibrate(m, "small", p, candidate, serving)
                change = (summary.failure_rate - summary.previous_failure_rate) * summary.items / (summary.items + 20)
                cells.append(f"{share(learned):.3f} ({summary.intercept_after - summary.intercept_before:+.3f})")
            print(f"  {label:<24} {change:+.3f}   {' / '.join(cells)}")


if __name__ == "__main__":
    main()
