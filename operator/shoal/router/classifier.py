"""A cheap in-process classifier: prompt text -> smallest capable tier, with a confidence.

Features are hashed (CRC32, stable across processes) word unigrams, word bigrams and
character trigrams of the lower-cased text, in a 2**18-dimensional space; the model is a
multinomial logistic regression trained with AdaGrad and L2. Prediction touches a few
hundred weights, well under a millisecond on a CPU, and needs nothing beyond the
standard library.

The trained model is a JSON file (`shoal router train --data labelled.jsonl --out
model.json`); the labelled data is JSON lines of {"prompt": TEXT, "tier": NAME}, where
NAME is the smallest tier that answered the prompt well.
"""

from __future__ import annotations

import json
import math
import random
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .decision import Prediction

FORMAT = "shoal-router-classifier/v1"
DIMENSIONS = 1 << 18
# Long prompts are classified on their first characters: the cost stays bounded and the
# opening of a prompt carries most of the task's nature.
MAX_CHARS = 1024
_WORD = re.compile(r"\w+", re.UNICODE)


def features(text: str) -> dict[int, float]:
    """Hashed n-gram counts, scaled to unit length."""
    text = text[:MAX_CHARS].lower()
    words = _WORD.findall(text)
    counts: dict[int, float] = {}
    crc = zlib.crc32
    mask = DIMENSIONS - 1
    previous = "<s>"
    for word in words:
        for token in ("w:" + word, "b:" + previous + " " + word):
            h = crc(token.encode()) & mask
            counts[h] = counts.get(h, 0.0) + 1.0
        padded = f"^{word}$"
        for i in range(len(padded) - 2):
            h = crc(("c:" + padded[i : i + 3]).encode()) & mask
            counts[h] = counts.get(h, 0.0) + 1.0
        previous = word
    counts[crc(f"len:{min(len(words) // 16, 16)}".encode()) & mask] = 1.0
    norm = math.sqrt(sum(v * v for v in counts.values())) or 1.0
    return {k: v / norm for k, v in counts.items()}


@dataclass
class Classifier:
    classes: list[str]
    bias: list[float]
    weights: dict[int, list[float]]

    def probabilities(self, text: str) -> list[float]:
        scores = list(self.bias)
        n = len(scores)
        for index, value in features(text).items():
            row = self.weights.get(index)
            if row is not None:
                for c in range(n):
                    scores[c] += row[c] * value
        top = max(scores)
        exps = [math.exp(s - top) for s in scores]
        total = sum(exps)
        return [e / total for e in exps]

    def predict(self, text: str) -> Prediction:
        probs = self.probabilities(text)
        best = max(range(len(probs)), key=probs.__getitem__)
        return Prediction(self.classes[best], probs[best])

    __call__ = predict

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "dimensions": DIMENSIONS,
            "classes": self.classes,
            "bias": [round(b, 6) for b in self.bias],
            "weights": {str(k): [round(w, 6) for w in row] for k, row in self.weights.items() if any(abs(w) > 1e-6 for w in row)},
        }

    @classmethod
    def from_json(cls, data: dict) -> Classifier:
        if data.get("format") != FORMAT or data.get("dimensions") != DIMENSIONS:
            raise ValueError(f"not a {FORMAT} model with {DIMENSIONS} dimensions")
        classes = list(data["classes"])
        weights = {int(k): [float(w) for w in row] for k, row in data["weights"].items()}
        if any(len(row) != len(classes) for row in weights.values()) or len(data["bias"]) != len(classes):
            raise ValueError("weight rows do not match the number of classes")
        return cls(classes, [float(b) for b in data["bias"]], weights)

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        return cls.from_json(json.loads(Path(path).read_text()))


def read_labelled(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, tier) pairs from JSON lines; blank lines are skipped, anything else is an error."""
    examples = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            prompt, tier = item["prompt"], item["tier"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: expected {{\"prompt\": ..., \"tier\": ...}}") from exc
        if not isinstance(prompt, str) or not isinstance(tier, str):
            raise ValueError(f"{path}:{number}: prompt and tier must be strings")
        examples.append((prompt, tier))
    return examples


def train(
    examples: Sequence[tuple[str, str]],
    classes: Iterable[str] | None = None,
    epochs: int = 30,
    learning_rate: float = 0.5,
    l2: float = 1e-4,
    seed: int = 0,
) -> Classifier:
    """Fit the classifier. `classes` fixes the order (smallest tier first); by default the
    order in which tiers first appear in the data."""
    if not examples:
        raise ValueError("no labelled examples")
    order = list(classes) if classes is not None else list(dict.fromkeys(t for _, t in examples))
    index = {c: i for i, c in enumerate(order)}
    unknown = {t for _, t in examples if t not in index}
    if unknown:
        raise ValueError(f"examples name tiers outside the classes: {sorted(unknown)}")
    n = len(order)
    data = [(features(p), index[t]) for p, t in examples]
    weights: dict[int, list[float]] = {}
    grad_sq: dict[int, list[float]] = {}
    bias = [0.0] * n
    bias_sq = [1e-8] * n
    rng = random.Random(seed)
    for _ in range(epochs):
        rng.shuffle(data)
        for feats, label in data:
            scores = list(bias)
            for k, v in feats.items():
                row = weights.get(k)
                if row is not None:
                    for c in range(n):
                        scores[c] += row[c] * v
            top = max(scores)
            exps = [math.exp(s - top) for s in scores]
            total = sum(exps)
            error = [exps[c] / total - (1.0 if c == label else 0.0) for c in range(n)]
            for c in range(n):
                bias_sq[c] += error[c] ** 2
                bias[c] -= learning_rate * error[c] / math.sqrt(bias_sq[c])
            for k, v in feats.items():
                row = weights.setdefault(k, [0.0] * n)
                sq = grad_sq.setdefault(k, [1e-8] * n)
                for c in range(n):
                    g = error[c] * v + l2 * row[c]
                    sq[c] += g * g
                    row[c] -= learning_rate * g / math.sqrt(sq[c])
    return Classifier(order, bias, weights)
