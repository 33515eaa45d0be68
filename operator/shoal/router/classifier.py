"""In-process routing models: prompt text -> the tier to start at.

Two formats. v1 (below, first): a multinomial classifier of the smallest capable tier,
with a confidence. v2 (further down): per step up the ladder, the expected gain of
climbing, learned from per-tier outcomes, with thresholds calibrated to target shares.
`load_model` (and `Classifier.load`, which the sidecar calls) reads either.

v1:

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

import base64
import json
import math
import random
import re
import zlib
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import features as F
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
    def load(cls, path: str | Path) -> Classifier | DifficultyModel:  # type: ignore[name-defined]
        """Either format (see load_model): the sidecar loads models through here."""
        return load_model(path)


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


# --- v2: the expected gain of each step up the ladder, learned from outcomes ----------------
# A v2 model (`shoal-router-classifier/v2`) answers, for each step of the ladder (tier k
# to tier k+1), two questions about a prompt: how likely is it that tier k fails where tier
# k+1 answers well (the step *helps*), and that tier k answers well where tier k+1 fails
# (the step *hurts*). Each is a binary logistic regression on the hashed prompt features of
# `shoal.router.features`. A request climbs a step while the expected gain
# P(helps) - P(hurts) reaches the step's threshold.
#
# Why this target: on the shared routing data (benchmarks/routing, 5-fold cross-validation)
# ranking prompts by the expected gain recovers clearly more of the quality gap than
# ranking by "the small tier fails" (MMLU APGR about 0.66 against 0.58): a prompt that both
# tiers fail is hard, but sending it up buys nothing.
#
# The prompt models are fitted by averaged SGD with an L2 penalty (fit_averaged): on the
# same folds MMLU APGR 0.675 and GSM8K 0.649, against 0.629 and 0.635 with four AdaGrad
# passes (0.681 and 0.656 with version 2 of the prompt features). Being regularised, their gains are honest probabilities and sit close together
# (on MMLU most prompts' expected gain is near the mean, 0.13, above DEFAULT_MIN_GAIN), so
# the default threshold sends most prompts up; a target share sets a useful one.
#
# Training data are outcome lines {"prompt", "outcomes": {TIER: bool}} (which tiers answered
# well) or tier lines {"prompt", "tier"} (the smallest tier that answered well, read as: that
# tier and every larger one answered well, every smaller one did not). An outcome line with
# "response" (the smallest tier's answer) also trains the *verifier* of the first step, for a
# cascade that answers small first: the chance that this answer is wrong (a logistic
# regression on features of the prompt and the answer) and the chance that the next tier
# answers well (on the prompt), whose sum minus one is the expected gain of climbing (see
# Verifier). Model files written before it carry a Step (helps and hurts on the answer's
# features, version 1) and are judged as before.
#
# Thresholds: by default DEFAULT_MIN_GAIN (climb when climbing is expected to fix at least
# one answer in twenty; at 0 a prompt both tiers fail climbs on noise). The model keeps a
# sample of its cross-fitted scores (scores of prompts the scoring model was not trained
# on), so that `with_target_shares({"small": 0.8})` picks the thresholds that send that
# share of traffic to each tier; `shoal.router.share` holds the share at run time.


FORMAT_V2 = "shoal-router-classifier/v2"
CALIBRATION_ROWS = 1000
DEFAULT_MIN_GAIN = 0.05
VERIFIER_EPOCHS = 4


@dataclass(frozen=True)
class Example:
    """One training line: which tiers answered well (None: not known for that tier)."""

    prompt: str
    outcomes: dict[str, bool]
    response: str | None = None


@dataclass
class Logistic:
    """A binary logistic regression over hashed features (weights: a dense array)."""

    bias: float
    weights: array  # array("f"), 2**bits entries

    def logit(self, feats: dict[int, float]) -> float:
        w = self.weights
        return self.bias + sum(w[k] * v for k, v in feats.items())

    def probability(self, feats: dict[int, float]) -> float:
        z = self.logit(feats)
        return 1.0 / (1.0 + math.exp(-z)) if z > -30 else 0.0

    def to_json(self) -> dict:
        # 8-bit weights with one scale per model: a quarter of the size of float32, and the
        # benchmark measures the routing quality of the quantised model, not the float one.
        scale = max((abs(w) for w in self.weights), default=0.0) / 127 or 1.0
        quantised = array("b", (max(-127, min(127, round(w / scale))) for w in self.weights))
        return {"bias": round(self.bias, 6), "scale": scale, "weights": base64.b64encode(quantised.tobytes()).decode()}

    @classmethod
    def from_json(cls, data: dict, bits: int) -> Logistic:
        raw = array("b")
        raw.frombytes(base64.b64decode(data["weights"], validate=True))
        if len(raw) != 1 << bits:
            raise ValueError(f"a weight array has {len(raw)} entries, expected {1 << bits}")
        scale = float(data["scale"])
        return cls(float(data["bias"]), array("f", (w * scale for w in raw)))


def base_log_odds(labels: Sequence[float]) -> float:
    """The log-odds of the labels' mean (kept within 1e-3 of 0 and 1); 0 without labels."""
    if not labels:
        return 0.0
    rate = min(max(sum(labels) / len(labels), 1e-3), 1 - 1e-3)
    return math.log(rate / (1 - rate))


def fit_logistic(
    rows: Sequence[dict[int, float]],
    labels: Sequence[float],
    bits: int,
    epochs: int = 6,
    learning_rate: float = 0.3,
    l2: float = 1e-6,
    seed: int = 0,
) -> Logistic:
    """AdaGrad on the log loss, one pass over the shuffled rows per epoch."""
    size = 1 << bits
    weights = array("f", bytes(4 * size))
    squares = array("f", [1e-6]) * size
    bias, bias_square = base_log_odds(labels), 1e-6
    order = list(range(len(rows)))
    rng = random.Random(seed)
    sqrt, exp = math.sqrt, math.exp
    for _ in range(epochs):
        rng.shuffle(order)
        for i in order:
            feats = rows[i]
            z = bias
            for k, v in feats.items():
                z += weights[k] * v
            z = max(-30.0, min(30.0, z))
            error = 1.0 / (1.0 + exp(-z)) - labels[i]
            bias_square += error * error
            bias -= learning_rate * error / sqrt(bias_square)
            for k, v in feats.items():
                g = error * v + l2 * weights[k]
                squares[k] += g * g
                weights[k] -= learning_rate * g / sqrt(squares[k])
    return Logistic(bias, weights)


def fit_averaged(
    rows: Sequence[dict[int, float]],
    labels: Sequence[float],
    bits: int,
    epochs: int = 12,
    l2: float | None = None,
    learning_rate: float = 0.5,
    seed: int = 0,
) -> Logistic:
    """Averaged SGD on the mean log loss plus (l2 / 2) * |w|^2: the prompt steps' trainer.

    `l2` defaults to 1 / len(rows), a total penalty of 1 whatever the size of the data
    (the default strength of common logistic regression libraries), so a small training
    set is held back more than a large one. The step is learning_rate / (1 + learning_rate
    * l2 * t) after t updates; the weights are kept as scale * v, so the penalty shrinks
    every weight at each update in O(1). The model returned is the mean of the weights at
    the end of each pass of the second half: the last passes' noise averages out.

    The bias stays at the log-odds of the labels' mean: a prompt made of words the model
    never saw scores the base rate. A learned bias drifts with the features it shares the
    work with, so copies trained on different parts of the data (the calibration sample's
    cross-fitted copies, and the full model) scored unfamiliar prompts a few points apart,
    and a threshold set from the copies kept 0.58 to 0.82 of MMLU prompts small for a
    target of 0.8; with the bias fixed, 0.77 to 0.83, at the same APGR.

    Why not fit_logistic's AdaGrad: on the shared routing data (benchmarks/routing, 5-fold)
    four AdaGrad passes without a real penalty stop far from the regularised optimum
    (MMLU APGR 0.63); this reaches what a full-batch numeric optimiser reaches (0.675)
    in one to two seconds of pure Python per model on MMLU's 9,802 prompts.
    """
    size = 1 << bits
    n = len(rows)
    penalty = l2 if l2 is not None else 1.0 / max(n, 1)
    v = [0.0] * size
    scale = 1.0
    bias = base_log_odds(labels)
    total = [0.0] * size
    averaged = 0
    first_averaged = epochs // 2
    order = list(range(n))
    rng = random.Random(seed)
    exp = math.exp
    t = 0
    for epoch in range(epochs):
        rng.shuffle(order)
        for i in order:
            step = learning_rate / (1.0 + learning_rate * penalty * t)
            t += 1
            feats = rows[i]
            z = 0.0
            for k, x in feats.items():
                z += v[k] * x
            z = max(-30.0, min(30.0, bias + scale * z))
            error = 1.0 / (1.0 + exp(-z)) - labels[i]
            scale *= 1.0 - step * penalty
            delta = step * error / scale
            for k, x in feats.items():
                v[k] -= delta * x
            if scale < 1e-9:
                v = [a * scale for a in v]
                scale = 1.0
        if epoch >= first_averaged:
            total = [a + b * scale for a, b in zip(total, v)]
            averaged += 1
    if not averaged:
        return Logistic(bias, array("f", (a * scale for a in v)))
    return Logistic(bias, array("f", (a / averaged for a in total)))


@dataclass
class Step:
    """One step of the ladder: from `lower` to `upper`."""

    lower: str
    upper: str
    helps: Logistic
    hurts: Logistic
    threshold: float = DEFAULT_MIN_GAIN
    # (slope, intercept) of P(needed) = sigmoid(slope * gain + intercept), fitted on the
    # cross-fitted gains of the training prompts; None in files written before it.
    needed: tuple[float, float] | None = None

    def gain(self, feats: dict[int, float]) -> float:
        return self.helps.probability(feats) - self.hurts.probability(feats)


@dataclass
class Verifier:
    """The first step's verifier: whether the smaller tier's answer is wrong, read from the
    prompt and that answer, and whether the larger tier would answer well, read from the
    prompt alone.

    With the two taken as independent, climbing helps with probability
    P(wrong) * P(right) and hurts with (1 - P(wrong)) * (1 - P(right)), so the expected
    gain is P(wrong) + P(right) - 1. Measured on the GSM8K folds (benchmarks/routing) this
    recovers about 0.01 APGR more than a Step fitted to helps and hurts on the answer's
    features directly: "wrong" is a label on every answer (a third of them positive), where
    "helps" and "hurts" are rarer and noisier.
    """

    lower: str
    upper: str
    wrong: Logistic  # on F.answer_features(prompt, answer) of `features` version
    right: Logistic  # on F.prompt_features(prompt) of the model's prompt_features version
    threshold: float = DEFAULT_MIN_GAIN
    features: int = F.ANSWER_FEATURES
    needed: tuple[float, float] | None = None  # as Step.needed, on the verifier's gain

    def probabilities(self, text: str, answer: str, bits: int, prompt_feats: dict[int, float] | None = None) -> tuple[float, float]:
        """(P(the lower tier's answer is wrong), P(the upper tier answers well)).
        `prompt_feats`: the prompt's features, of the version `right` was trained on
        (DifficultyModel.features); by default the current version's."""
        if prompt_feats is None:
            prompt_feats = F.prompt_features(text, bits)
        return self.wrong.probability(F.answer_features(text, answer, bits, self.features)), self.right.probability(prompt_feats)

    def gain_of(self, answer_feats: dict[int, float], prompt_feats: dict[int, float]) -> float:
        """The expected gain of climbing, P(wrong) + P(right) - 1, from features already read."""
        return self.wrong.probability(answer_feats) + self.right.probability(prompt_feats) - 1.0


@dataclass
class DifficultyModel:
    """The v2 model: steps for prompts alone, and optionally a verifier for the first step
    that also reads the smallest tier's answer."""

    classes: list[str]
    bits: int
    steps: list[Step]
    # A Verifier; model files written before it have a Step on version 1 answer features.
    verifier: Verifier | Step | None = None
    # Cross-fitted expected gains of training prompts, one row per prompt, one value per step.
    calibration: list[list[float]] = field(default_factory=list)
    verifier_calibration: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    # The version of the prompt features the steps were trained on (features.PROMPT_FEATURES
    # when trained now; files written before versions existed say nothing and mean 1).
    prompt_features: int = 1
    # Cross-fitted logits of each step's helps model over the same training prompts as
    # `calibration` (row for row): the reference a prompt-free recalibration moves the mean
    # P(helps) over (router/learning.py). Empty in files written before it.
    helps_logits: list[list[float]] = field(default_factory=list)

    def features(self, text: str) -> dict[int, float]:
        """The prompt's hashed features as the steps read them."""
        return F.prompt_features(text, self.bits, self.prompt_features)

    def gains(self, text: str) -> list[float]:
        feats = self.features(text)
        return [step.gain(feats) for step in self.steps]

    def verifier_gain(self, text: str, answer: str, prompt_feats: dict[int, float] | None = None) -> float:
        """The verifier's expected gain of climbing from the smallest tier, given its answer.
        `prompt_feats`: self.features(text), when the caller has them already."""
        v = self.verifier
        if v is None:
            raise ValueError("the model has no verifier (train it with \"response\" on outcome lines)")
        if isinstance(v, Verifier):
            # "right" was trained on the model's own version of the prompt features.
            wrong, right = v.probabilities(text, answer, self.bits, prompt_feats if prompt_feats is not None else self.features(text))
            return wrong + right - 1.0
        return v.gain(F.answer_features(text, answer, self.bits, version=1))

    def _verifier_helps(self, text: str, answer: str, prompt_feats: dict[int, float]) -> float:
        v = self.verifier
        assert v is not None
        if v.needed is not None:
            return needed_probability(v.needed, self.verifier_gain(text, answer, prompt_feats))
        if isinstance(v, Verifier):
            wrong, right = v.probabilities(text, answer, self.bits, prompt_feats)
            return wrong * right
        return v.helps.probability(F.answer_features(text, answer, self.bits, version=1))

    def scores(self, text: str, answer: str | None = None) -> dict[str, float]:
        """Per tier, the probability that the request needs it: that the tier below fails
        where this one answers well (the smallest tier: 1.0, every request needs it).

        A tier's score is the calibrated map of the expected gain of the step into it
        (Step.needed), an increasing function of that one step's gain. Ordering requests by
        the second tier's score therefore orders them exactly as the router's first step
        does, so on a two-tier ladder a routing benchmark run on these scores measures the
        router. A higher tier's score reads its own step alone, while the router reaches
        that tier only after climbing every step below it: ranking by it is not the
        router's order. Files written before the map score with the step's helps model
        alone (or the verifier's P(wrong) * P(right)), which orders requests differently
        from the climb even on the first step."""
        feats = self.features(text)
        out = {self.classes[0]: 1.0}
        for i, step in enumerate(self.steps):
            if i == 0 and answer is not None and self.verifier is not None:
                out[step.upper] = self._verifier_helps(text, answer, feats)
            elif step.needed is not None:
                out[step.upper] = needed_probability(step.needed, step.gain(feats))
            else:
                out[step.upper] = step.helps.probability(feats)
        return out

    def tier_for(
        self, text: str, answer: str | None = None, thresholds: Sequence[float] | None = None, prompt_feats: dict[int, float] | None = None,
    ) -> str:
        """Climb while the expected gain of the next step reaches its threshold.
        `prompt_feats`: self.features(text), when the caller has them already."""
        feats = prompt_feats if prompt_feats is not None else self.features(text)
        limits = thresholds if thresholds is not None else [s.threshold for s in self.steps]
        tier = self.classes[0]
        for i, step in enumerate(self.steps):
            if i == 0 and answer is not None and self.verifier is not None:
                gain = self.verifier_gain(text, answer, feats)
                limit = self.verifier.threshold
            else:
                gain, limit = step.gain(feats), limits[i]
            if gain < limit:
                break
            tier = step.upper
        return tier

    def predict(self, text: str) -> Prediction:
        # The thresholds are the model's own (calibrated to target shares): a v2 model's
        # decision is final, so it reports full confidence and the policy's
        # confidenceThreshold (meant for v1 class probabilities) never second-guesses it.
        feats = self.features(text)
        return Prediction(self.tier_for(text, prompt_feats=feats), 1.0, feats)

    __call__ = predict

    def with_target_shares(self, shares: Mapping[str, float]) -> DifficultyModel:
        """A copy whose thresholds send `shares` of the calibration prompts to those tiers
        (see thresholds_for_shares)."""
        thresholds = thresholds_for_shares(self.classes, self.calibration, shares, [s.threshold for s in self.steps])
        return replace(self, steps=[replace(s, threshold=t) for s, t in zip(self.steps, thresholds)])

    def to_json(self) -> dict:
        def needed(pair: tuple[float, float] | None) -> dict:
            return {"needed": [round(pair[0], 6), round(pair[1], 6)]} if pair is not None else {}

        def step(s: Step) -> dict:
            return {"lower": s.lower, "upper": s.upper, "threshold": s.threshold, "helps": s.helps.to_json(), "hurts": s.hurts.to_json(), **needed(s.needed)}

        def verifier_json(v: Verifier | Step) -> dict:
            if isinstance(v, Step):
                return step(v)
            return {
                "lower": v.lower, "upper": v.upper, "threshold": v.threshold, "answerFeatures": v.features,
                "wrong": v.wrong.to_json(), "right": v.right.to_json(), **needed(v.needed),
            }

        return {
            "format": FORMAT_V2,
            "bits": self.bits,
            "promptFeatures": self.prompt_features,
            "classes": self.classes,
            "steps": [step(s) for s in self.steps],
            "verifier": verifier_json(self.verifier) if self.verifier else None,
            "calibration": [[round(v, 4) for v in row] for row in self.calibration],
            "verifierCalibration": [round(v, 4) for v in self.verifier_calibration],
            "info": self.info,
            **({"helpsLogits": [[round(v, 4) for v in row] for row in self.helps_logits]} if self.helps_logits else {}),
        }

    @classmethod
    def from_json(cls, data: dict) -> DifficultyModel:
        if data.get("format") != FORMAT_V2:
            raise ValueError(f"not a {FORMAT_V2} model")
        try:
            bits = int(data["bits"])
            if not 8 <= bits <= 20:
                raise ValueError(f"bits {bits} outside 8..20")
            version = _integer("promptFeatures", data.get("promptFeatures", 1))
            if not 1 <= version <= F.PROMPT_FEATURES:
                raise ValueError(f"promptFeatures {version} outside 1..{F.PROMPT_FEATURES} (a newer Shoal wrote this model)")

            def needed(d: dict, where: str) -> tuple[float, float] | None:
                pair = d.get("needed")
                if pair is None:
                    return None
                if not isinstance(pair, list) or len(pair) != 2 or not all(_is_finite(v) for v in pair):
                    raise ValueError(f"{where}.needed {pair!r} is not [slope, intercept] of two finite numbers")
                slope, intercept = float(pair[0]), float(pair[1])
                if not slope > 0:
                    raise ValueError(f"{where}.needed slope {slope} is not positive")
                return slope, intercept

            def step(d: dict, where: str) -> Step:
                return Step(
                    str(d["lower"]), str(d["upper"]), Logistic.from_json(d["helps"], bits), Logistic.from_json(d["hurts"], bits),
                    float(d["threshold"]), needed(d, where),
                )

            def verifier(d: dict) -> Verifier | Step:
                if "wrong" not in d:
                    return step(d, "verifier")  # written before Verifier: helps and hurts on the answer
                version = _integer("answerFeatures", d["answerFeatures"])
                if not 2 <= version <= F.ANSWER_FEATURES:
                    raise ValueError(f"answerFeatures {version} outside 2..{F.ANSWER_FEATURES}")
                return Verifier(
                    str(d["lower"]), str(d["upper"]), Logistic.from_json(d["wrong"], bits), Logistic.from_json(d["right"], bits),
                    float(d["threshold"]), version, needed(d, "verifier"),
                )

            def rows(name: str) -> list[list[float]]:
                """A table of one row per calibration prompt and one finite number per step."""
                table = data.get(name, [])
                if not isinstance(table, list):
                    raise ValueError(f"{name} is not a list of rows")
                for i, row in enumerate(table):
                    if not isinstance(row, list) or len(row) != len(steps):
                        raise ValueError(f"{name}[{i}] {row!r} is not a row of {len(steps)} numbers (one per step)")
                    bad = [v for v in row if not _is_finite(v)]
                    if bad:
                        raise ValueError(f"{name}[{i}] holds {bad[0]!r}, not a finite number")
                return [[float(v) for v in row] for row in table]

            classes = [str(c) for c in data["classes"]]
            steps = [step(s, f"steps[{i}]") for i, s in enumerate(data["steps"])]
            if [s.lower for s in steps] != classes[:-1] or [s.upper for s in steps] != classes[1:]:
                raise ValueError("steps do not climb the classes in order")
            calibration, helps_logits = rows("calibration"), rows("helpsLogits")
            if calibration and helps_logits and len(helps_logits) != len(calibration):
                raise ValueError(
                    f"helpsLogits has {len(helps_logits)} rows, calibration {len(calibration)} (they are row for row the same prompts)"
                )
            return cls(
                classes,
                bits,
                steps,
                verifier(data["verifier"]) if data.get("verifier") else None,
                calibration,
                [float(v) for v in data.get("verifierCalibration", [])],
                dict(data.get("info", {})),
                version,
                helps_logits,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed {FORMAT_V2} model: {exc}") from exc


def _integer(name: str, value: Any) -> int:
    """A model file's version number: an integer, not a bool, a float or a string."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} {value!r} is not an integer")
    return value


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def thresholds_for_shares(
    classes: Sequence[str], calibration: Sequence[Sequence[float]], shares: Mapping[str, float], defaults: Sequence[float]
) -> list[float]:
    """Per step, the threshold that makes `shares[tier]` of the calibration prompts stop at
    that tier, walking up the ladder (a prompt reaches step k only if it climbed every step
    below). Tiers without a target keep their default threshold; the largest tier takes
    what is left. With no calibration rows the defaults stand."""
    unknown = set(shares) - set(classes)
    if unknown:
        raise ValueError(f"target shares name tiers outside the model: {sorted(unknown)}")
    thresholds = list(defaults)
    if not calibration:
        return thresholds
    n = len(calibration)
    reached = list(calibration)
    for k in range(len(classes) - 1):
        if classes[k] in shares:
            stop = round(shares[classes[k]] * n)
            ordered = sorted(row[k] for row in reached)
            if stop <= 0:
                thresholds[k] = -math.inf
            elif stop >= len(ordered):
                thresholds[k] = math.inf
            else:
                # Climb at or above the value that leaves `stop` prompts below it.
                thresholds[k] = (ordered[stop - 1] + ordered[stop]) / 2
        reached = [row for row in reached if row[k] >= thresholds[k]]
    return thresholds


def step_labels(example: Example, lower: str, upper: str) -> tuple[float, float] | None:
    """(helps, hurts) of the step lower -> upper for one example, None when not known."""
    a, b = example.outcomes.get(lower), example.outcomes.get(upper)
    if a is None or b is None:
        return None
    return (1.0 if (not a and b) else 0.0, 1.0 if (a and not b) else 0.0)


def read_examples(path: str | Path, classes: Sequence[str] | None = None) -> tuple[list[Example], list[str]]:
    """Training lines (tier lines and outcome lines may be mixed) and the tier order.

    The order is `classes` when given, else the order in which tiers first appear (tier
    lines: their tier; outcome lines: the keys of "outcomes", smallest first). A blank
    line is skipped; anything else that is not one of the two shapes is an error naming
    the line.
    """
    raw: list[tuple[str, str | None, dict[str, bool] | None, str | None]] = []
    seen: dict[str, None] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{where}: not JSON") from exc
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise ValueError(f"{where}: expected an object with a string \"prompt\"")
        response = item.get("response")
        if response is not None and not isinstance(response, str):
            raise ValueError(f"{where}: \"response\" must be a string")
        if "outcomes" in item:
            outcomes = item["outcomes"]
            if not isinstance(outcomes, dict) or not outcomes or not all(isinstance(k, str) and isinstance(v, bool) for k, v in outcomes.items()):
                raise ValueError(f"{where}: \"outcomes\" must map tier names to true or false")
            seen.update(dict.fromkeys(outcomes))
            raw.append((item["prompt"], None, outcomes, response))
        elif isinstance(item.get("tier"), str):
            seen[item["tier"]] = None
            raw.append((item["prompt"], item["tier"], None, response))
        else:
            raise ValueError(f"{where}: expected {{\"prompt\", \"tier\"}} or {{\"prompt\", \"outcomes\": {{TIER: true|false}}}}")
    if not raw:
        raise ValueError(f"{path}: no training lines")
    order = list(classes) if classes is not None else list(seen)
    unknown = set(seen) - set(order)
    if unknown:
        raise ValueError(f"training lines name tiers outside the classes: {sorted(unknown)}")
    if len(order) < 2:
        raise ValueError("at least two tiers are needed to learn where to route")
    examples = []
    for prompt, tier, outcomes, response in raw:
        if tier is not None:
            smallest = order.index(tier)
            outcomes = {t: i >= smallest for i, t in enumerate(order)}
        examples.append(Example(prompt, dict(outcomes or {}), response))
    return examples, order


def train_difficulty(
    examples: Sequence[Example],
    classes: Sequence[str],
    bits: int = F.DIMENSIONS_BITS,
    epochs: int = 12,
    calibration_folds: int = 3,
    seed: int = 0,
) -> DifficultyModel:
    """Fit the steps (and the verifier, when examples carry responses), then cross-fit
    `calibration_folds` copies to record scores of prompts each copy did not see.

    The steps read the prompt alone and are fitted by fit_averaged (`epochs` passes); the
    verifier is fitted by fit_logistic (VERIFIER_EPOCHS AdaGrad passes, as measured for the
    cascade)."""
    classes = list(classes)
    prompt_feats = [F.prompt_features(e.prompt, bits, F.PROMPT_FEATURES) for e in examples]
    answer_rows = [i for i, e in enumerate(examples) if e.response is not None]
    answer_feats = {i: F.answer_features(examples[i].prompt, examples[i].response or "", bits) for i in answer_rows}

    # One penalty for the full steps and their cross-fitted copies: a copy trained on two
    # thirds of the prompts with a penalty of its own size would score on a flatter scale,
    # and thresholds set from its scores would not hold for the full model.
    penalty = 1.0 / max(len(examples), 1)

    def fit_prompt(rows: Sequence[dict[int, float]], labels: Sequence[float], seed: int) -> Logistic:
        return fit_averaged(rows, labels, bits, epochs=epochs, l2=penalty, seed=seed)

    def fit_step(
        lower: str, upper: str, indices: Sequence[int], feats_of: Callable[[int], dict[int, float]], fit: Callable[..., Logistic] = fit_prompt
    ) -> Step | None:
        pairs = [(i, step_labels(examples[i], lower, upper)) for i in indices]
        known = [(i, labels) for i, labels in pairs if labels is not None]
        if not known:
            return None
        rows = [feats_of(i) for i, _ in known]
        helps = fit(rows, [labels[0] for _, labels in known], seed)
        hurts = fit(rows, [labels[1] for _, labels in known], seed + 1)
        return Step(lower, upper, helps, hurts)

    everyone = range(len(examples))
    steps = []
    for lower, upper in zip(classes, classes[1:]):
        step = fit_step(lower, upper, everyone, prompt_feats.__getitem__)
        if step is None:
            raise ValueError(f"no training line says how both {lower!r} and {upper!r} did")
        steps.append(step)
    verifier = fit_verifier(examples, answer_rows, prompt_feats, answer_feats, classes[0], classes[1], bits, VERIFIER_EPOCHS, seed) if answer_rows else None

    calibration: list[list[float]] = []
    verifier_calibration: list[float] = []
    # The prompts (and answers) behind each cross-fitted row, for the maps to P(needed).
    calibration_rows: list[int] = []
    verifier_rows: list[int] = []
    helps_logits: list[list[float]] = []
    cross_fit = calibration_folds >= 2 and len(examples) >= 2 * calibration_folds
    if cross_fit:
        fold_of = [i % calibration_folds for i in range(len(examples))]
        random.Random(seed).shuffle(fold_of)
        for fold in range(calibration_folds):
            train_rows = [i for i in everyone if fold_of[i] != fold]
            held_out = [i for i in everyone if fold_of[i] == fold]
            fold_steps = [fit_step(s.lower, s.upper, train_rows, prompt_feats.__getitem__) or s for s in steps]
            calibration.extend([s.gain(prompt_feats[i]) for s in fold_steps] for i in held_out)
            helps_logits.extend([s.helps.logit(prompt_feats[i]) for s in fold_steps] for i in held_out)
            calibration_rows.extend(held_out)
            if verifier is not None:
                fold_verifier = fit_verifier(examples, train_rows, prompt_feats, answer_feats, classes[0], classes[1], bits, VERIFIER_EPOCHS, seed)
                if fold_verifier is not None:
                    answered_here = [i for i in held_out if i in answer_feats]
                    verifier_calibration.extend(fold_verifier.gain_of(answer_feats[i], prompt_feats[i]) for i in answered_here)
                    verifier_rows.extend(answered_here)
    else:  # no held-out scores: the maps are fitted on the model's own (in-sample) gains
        calibration = [[s.gain(prompt_feats[i]) for s in steps] for i in everyone]
        calibration_rows = list(everyone)
        if verifier is not None:
            verifier_calibration = [verifier.gain_of(answer_feats[i], prompt_feats[i]) for i in answer_rows]
            verifier_rows = list(answer_rows)
    for j, s_ in enumerate(steps):
        s_.needed = fit_needed(
            [(row[j], labels[0]) for row, i in zip(calibration, calibration_rows) if (labels := step_labels(examples[i], s_.lower, s_.upper)) is not None]
        )
    if verifier is not None:
        verifier.needed = fit_needed(
            [(g, labels[0]) for g, i in zip(verifier_calibration, verifier_rows) if (labels := step_labels(examples[i], verifier.lower, verifier.upper)) is not None]
        )
    if cross_fit:
        calibration = _sample(calibration, CALIBRATION_ROWS, seed)
        # The same seed and length pick the same rows: helps_logits stays row for row with calibration.
        helps_logits = _sample(helps_logits, CALIBRATION_ROWS, seed)
        verifier_calibration = sorted(_sample(verifier_calibration, CALIBRATION_ROWS, seed))
    else:
        calibration, verifier_calibration, helps_logits = [], [], []
    info = {"examples": len(examples), "withResponse": len(answer_rows), "epochs": epochs, "calibrationFolds": calibration_folds}
    return DifficultyModel(classes, bits, steps, verifier, calibration, verifier_calibration, info, F.PROMPT_FEATURES, helps_logits)


def fit_verifier(
    examples: Sequence[Example],
    indices: Sequence[int],
    prompt_feats: Sequence[dict[int, float]],
    answer_feats: Mapping[int, dict[int, float]],
    lower: str,
    upper: str,
    bits: int,
    epochs: int,
    seed: int,
) -> Verifier | None:
    """The Verifier of the step lower -> upper from the examples at `indices`: "wrong" from
    those with a response and a known outcome of `lower` (on `answer_feats`, which must be
    of F.ANSWER_FEATURES), "right" from every one with a known outcome of `upper` (on
    `prompt_feats`). None when either has no example."""
    answered = [i for i in indices if i in answer_feats and examples[i].outcomes.get(lower) is not None]
    judged = [i for i in indices if examples[i].outcomes.get(upper) is not None]
    if not answered or not judged:
        return None
    wrong = fit_logistic(
        [answer_feats[i] for i in answered], [0.0 if examples[i].outcomes[lower] else 1.0 for i in answered], bits, epochs=epochs, seed=seed
    )
    right = fit_logistic(
        [prompt_feats[i] for i in judged], [1.0 if examples[i].outcomes[upper] else 0.0 for i in judged], bits, epochs=epochs, seed=seed + 2
    )
    return Verifier(lower, upper, wrong, right)


MIN_NEEDED_SLOPE = 1e-3


def needed_probability(pair: tuple[float, float], gain: float) -> float:
    z = pair[0] * gain + pair[1]
    z = max(-30.0, min(30.0, z))
    return 1.0 / (1.0 + math.exp(-z))


def fit_needed(pairs: Sequence[tuple[float, float]], iterations: int = 50) -> tuple[float, float] | None:
    """(slope, intercept) of P(needed | gain) = sigmoid(slope * gain + intercept), fitted
    to (gain, 1 if the step helped else 0) pairs by Newton's method on the log loss with a
    light ridge (Platt scaling). The slope is kept at least MIN_NEEDED_SLOPE so the map is
    increasing: a tier's score then orders requests exactly as its gain does. None without
    pairs."""
    if not pairs:
        return None
    a, b = 1.0, base_log_odds([y for _, y in pairs])
    ridge = 1e-3
    for _ in range(iterations):
        ga = gb = haa = hab = hbb = 0.0
        for x, y in pairs:
            z = max(-30.0, min(30.0, a * x + b))
            p = 1.0 / (1.0 + math.exp(-z))
            w = p * (1 - p)
            ga += (p - y) * x
            gb += p - y
            haa += w * x * x
            hab += w * x
            hbb += w
        ga += ridge * a
        haa += ridge
        hbb += 1e-9
        det = haa * hbb - hab * hab
        if det <= 0:
            break
        da = (hbb * ga - hab * gb) / det
        db = (haa * gb - hab * ga) / det
        a, b = a - da, b - db
        if abs(da) < 1e-9 and abs(db) < 1e-9:
            break
    return max(a, MIN_NEEDED_SLOPE), b


def _sample(rows: list, limit: int, seed: int) -> list:
    if len(rows) <= limit:
        return rows
    return random.Random(seed).sample(rows, limit)


def load_model(path: str | Path) -> Classifier | DifficultyModel:
    """Either model format, by its "format" field."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and data.get("format") == FORMAT_V2:
        return DifficultyModel.from_json(data)
    return Classifier.from_json(data)
