"""Text features of a prompt (and of a small tier's answer) for the routing models.

Hashed with CRC32 (stable across processes and Python versions) into a fixed number of
dimensions, so a model is a flat weight array and needs no vocabulary.

Prompt features: the set of lower-cased word unigrams and bigrams of the first
MAX_CHARS characters, scaled to unit length, plus one token for the prompt's length
bucket (version 1). Version 2 (PROMPT_FEATURES, what `shoal router train` writes) adds the
opening words by position and the shape of each number (digits, decimal point) with the
bucketed count of numbers: on the shared routing data (benchmarks/routing, 5-fold, three
fold seeds) +0.004 to +0.007 APGR on MMLU and +0.002 to +0.005 on GSM8K, each seed. A
model file records its version ("promptFeatures"; none: 1) and is read with that one.
Measured there and not kept: character trigrams, bucketed counts of digits, options and
operators, the structure of multiple-choice options (count, length, numeric options,
negations such as NOT or EXCEPT, "all of the above"), question and option words apart,
word trigrams, word stems, IDF weights.

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
PROMPT_FEATURES = 2
OPENING_WORDS = 6
MAX_CHARS = 2048
SIGNAL_WEIGHT = 12
# The answer features' version: 2 added the `magnitude` signal. A model file records the
# version its verifier was trained on (none recorded: 1).
ANSWER_FEATURES = 2
_WORD = re.compile(r"[a-z]+|\d+")
_NUMBER = re.compile(r"\d+(\.\d+)?")


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


def shape_tokens(text: str) -> list[str]:
    """Version 2's additions: the first OPENING_WORDS words tagged as the opening (how the
    question opens: "which of the following", "a company's"), and each number's shape (its
    length in characters, and a point when it has decimals) with the bucketed count of
    numbers."""
    text = text[:MAX_CHARS].lower()
    tokens = ["f:" + w for w in _WORD.findall(text)[:OPENING_WORDS]]
    numbers = [m.group() for m in _NUMBER.finditer(text)]
    tokens.extend(f"n:{len(n)}{'.' if '.' in n else ''}" for n in numbers)
    tokens.append(f"nn:{_bucket(len(numbers))}")
    return tokens


def prompt_features(text: str, bits: int = DIMENSIONS_BITS, version: int = PROMPT_FEATURES) -> dict[int, float]:
    """The hashed prompt features of `version` (1 or 2; see the module docstring)."""
    tokens = prompt_tokens(text)
    if version >= 2:
        tokens.extend(shape_tokens(text))
    return hashed(tokens, bits)


def answer_tokens(text: str, answer: str, version: int = ANSWER_FEATURES) -> list[str]:
    """The tokens of a (prompt, answer) pair for the trained verifier (before hashing).
    `version` 1 is without the `magnitude` signal, as the verifiers of older model files
    were trained."""
    from .verify import answer_signals

    tokens = prompt_tokens(text)
    words = _WORD.findall(answer[:MAX_CHARS].lower())
    tokens.extend("r:" + w for w in words)
    signals = answer_signals(answer, text, with_magnitude=version >= 2)
    for name, value in signals.items():
        # Each signal is repeated so that it weighs like a dozen words, not one: on the
        # GSM8K folds this lifted the verifier's APGR by about 0.02 over a single token.
        tokens.extend(f"s:{name}={value}#{i}" for i in range(SIGNAL_WEIGHT))
    return tokens


def answer_features(text: str, answer: str, bits: int = DIMENSIONS_BITS, version: int = ANSWER_FEATURES) -> dict[int, float]:
    """Features of a (prompt, answer) pair for the trained verifier."""
    return hashed(answer_tokens(text, answer, version), bits)
