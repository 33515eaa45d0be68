"""Text features of a prompt (and of a small tier's answer) for the routing models.

Hashed with CRC32 (stable across processes and Python versions) into a fixed number of
dimensions, so a model is a flat weight array and needs no vocabulary.

Prompt features: the set of lower-cased word unigrams and bigrams of the first
MAX_CHARS characters, scaled to unit length, plus one token for the prompt's length
bucket. Measured on the shared routing data (benchmarks/routing): character trigrams and
bucketed counts (digits, numbers, options, operators) added nothing over this on
held-out folds, and cost time.

Answer features (the trained verifier of a cascade) add, with the prefix `r:`, the
answer's words and the signals of `shoal.router.verify.answer_signals` (arithmetic
consistency, a final answer and its magnitude against the prompt's numbers, hedging and
refusal phrases, length).

Pure Python: the router image carries no numeric libraries.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable

DIMENSIONS_BITS = 16
MAX_CHARS = 2048
SIGNAL_WEIGHT = 12
# The answer features' version: 2 added the `magnitude` signal. A model file records the
# version its verifier was trained on (none recorded: 1).
ANSWER_FEATURES = 2
_WORD = re.compile(r"[a-z]+|\d+")


def _bucket(n: int) -> int:
    return int(math.log2(1 + n))


def hashed(tokens: Iterable[str], bits: int) -> dict[int, float]:
    """Unit-length binary vector of the distinct tokens."""
    mask = (1 << bits) - 1
    crc = zlib.crc32
    out = {crc(t.encode()) & mask: 1.0 for t in set(tokens)}
    if not out:
        return out
    scale = 1.0 / math.sqrt(len(out))
    return {k: scale for k in out}


def prompt_tokens(text: str) -> list[str]:
    text = text[:MAX_CHARS].lower()
    words = _WORD.findall(text)
    tokens = ["w:" + w for w in words]
    previous = "<s>"
    for word in words:
        tokens.append("b:" + previous + " " + word)
        previous = word
    tokens.append(f"len:{_bucket(len(text))}")
    return tokens


def prompt_features(text: str, bits: int = DIMENSIONS_BITS) -> dict[int, float]:
    return hashed(prompt_tokens(text), bits)


def answer_tokens(text: str, answer: str, version: int = ANSWER_FEATURES) -> list[str]:
    """The tokens of a (prompt, answer) pair for the trained verifier (before hashing).
    `version` 1 is without the `magnitude` signal, as the verifiers of older model files
    were trained."""
    from .verify import answer_signals

    tokens = prompt_tokens(text)
    words = _WORD.findall(answer[:MAX_CHARS].lower())
    tokens.extend("r:" + w for w in words)
    signals = answer_signals(answer, text)
    if version < 2:
        del signals["magnitude"]
    for name, value in signals.items():
        # Each signal is repeated so that it weighs like a dozen words, not one: on the
        # GSM8K folds this lifted the verifier's APGR by about 0.02 over a single token.
        tokens.extend(f"s:{name}={value}#{i}" for i in range(SIGNAL_WEIGHT))
    return tokens


def answer_features(text: str, answer: str, bits: int = DIMENSIONS_BITS, version: int = ANSWER_FEATURES) -> dict[int, float]:
    """Features of a (prompt, answer) pair for the trained verifier."""
    return hashed(answer_tokens(text, answer, version), bits)
