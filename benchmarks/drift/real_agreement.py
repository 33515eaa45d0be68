"""How the shadow grading reads real answers: a weak and a strong model on GSM8K.

The routing data (per-prompt answers of Mixtral-8x7B-Instruct, the "small tier", and
gpt-4-1106-preview, the "reference", with each answer's correctness) is graded with the
router's own shadow grading (`shoal.router.shadow.grade_locally`, numeric: the last number
of each answer), exactly as a sidecar grades a sample. It shows what agreement measures:
how often the small tier's answer matches the reference's, against how often it is right.

Run:  python benchmarks/drift/real_agreement.py --data PATH/TO/gsm8k.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from shoal.api.shadow import ShadowGrading
from shoal.router.shadow import grade_locally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="gsm8k.jsonl with weak_response, strong_response, weak_correct, strong_correct")
    args = parser.parse_args(argv)
    grading = ShadowGrading(type="numeric")
    cells: Counter[tuple[str, bool, bool]] = Counter()
    with open(args.data) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for row in rows:
        outcome = grade_locally(grading, row["weak_response"], row["strong_response"])
        cells[(outcome, bool(row["weak_correct"]), bool(row["strong_correct"]))] += 1
    n = len(rows)
    agree = sum(v for (o, _, _), v in cells.items() if o == "agree")
    graded = sum(v for (o, _, _), v in cells.items() if o in ("agree", "disagree"))
    weak = sum(1 for r in rows if r["weak_correct"])
    strong = sum(1 for r in rows if r["strong_correct"])
    both = sum(v for (o, w, s), v in cells.items() if w and s)
    both_agree = cells[("agree", True, True)]
    print(f"{n} GSM8K items; graded {graded}, ungradable {n - graded}")
    print(f"small tier correct {weak / n:.1%}, reference correct {strong / n:.1%}")
    print(f"agreement (numeric grading) {agree / graded:.1%}")
    print(f"when both are right they agree {both_agree / both:.1%} ({both_agree}/{both})")
    print("| grade | small right, reference right | small right, reference wrong | small wrong, reference right | both wrong |")
    print("|---|---|---|---|---|")
    for outcome in ("agree", "disagree", "ungradable"):
        row = [cells[(outcome, w, s)] for w, s in ((True, True), (True, False), (False, True), (False, False))]
        print(f"| {outcome} | " + " | ".join(str(x) for x in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
