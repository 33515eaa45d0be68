"""Verifiers of a cascade: answer with a small tier, check the answer, escalate on doubt.

Every verifier is a pure function of the answer (and what the request asked for) to a
`Verdict`: accept, or reject with a reason from a closed set (the reasons are metric
label values). A cascade rejects when any configured verifier rejects.

- json-schema   the answer parses as JSON and fits the schema (the subset of JSON Schema
                that `response_format: json_schema` requests use: type, properties,
                required, additionalProperties, items, enum, const, minItems, maxItems,
                minimum, maximum, minLength, maxLength).
- regex         the answer matches a regular expression (for example a final-answer line).
- logprobs      the engine's token log-probabilities: minimum or mean below a threshold
                (the router asks the engine for them when the client did not).
- refusal       refusal or uncertainty phrases ("I cannot", "I'm not sure", ...).
- arithmetic    every calculation a step-by-step answer writes down (`<<6*3=18>>`,
                `6 * 3 = 18`) is right.
- trained       a model trained on (prompt, answer, outcome) triples scores the expected gain
                of escalating: the chance that the answer is wrong plus the chance that the
                next tier answers well, minus one (`shoal.router.classifier.Verifier`,
                trained with "response").

`answer_signals` turns an answer into the small set of discrete signals the trained
verifier also sees as features.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .answers import token_logprobs

ACCEPT = "accepted"
JSON_SCHEMA = "json-schema"
REGEX = "regex"
LOGPROBS = "logprobs"
REFUSAL = "refusal"
ARITHMETIC = "arithmetic"
TRAINED = "trained"
REASONS = frozenset({ACCEPT, JSON_SCHEMA, REGEX, LOGPROBS, REFUSAL, ARITHMETIC, TRAINED})


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str = ACCEPT
    detail: str = ""


OK = Verdict(True)


# --- JSON schema --------------------------------------------------------------------------

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def schema_errors(value: Any, schema: Mapping[str, Any], path: str = "$") -> list[str]:
    """What in `value` breaks `schema` (empty: it fits). A subset of JSON Schema, see above."""
    errors: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_is_type(value, k) for k in kinds):
            return [f"{path}: expected {'/'.join(kinds)}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: not one of the allowed values")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: not the constant value")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}: missing {name!r}")
        for name, item in value.items():
            if name in properties:
                errors.extend(schema_errors(item, properties[name], f"{path}.{name}"))
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}: unexpected {name!r}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if isinstance(schema.get("items"), Mapping):
            for i, item in enumerate(value):
                errors.extend(schema_errors(item, schema["items"], f"{path}[{i}]"))
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: above {schema['maximum']}")
    return errors


def _is_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    expected = _TYPES.get(kind)
    return expected is not None and isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))


def verify_json_schema(answer: str, schema: Mapping[str, Any]) -> Verdict:
    try:
        value = json.loads(answer)
    except ValueError:
        return Verdict(False, JSON_SCHEMA, "the answer is not JSON")
    errors = schema_errors(value, schema)
    return Verdict(False, JSON_SCHEMA, errors[0]) if errors else OK


# --- regular expression -------------------------------------------------------------------


def verify_regex(answer: str, pattern: re.Pattern[str]) -> Verdict:
    return OK if pattern.search(answer) else Verdict(False, REGEX, f"no match for {pattern.pattern!r}")


# --- token log-probabilities --------------------------------------------------------------


def verify_logprobs(logprobs: Sequence[float], min_logprob: float | None = None, mean_logprob: float | None = None) -> Verdict:
    """Reject when the least likely token or the mean token log-probability is below its
    threshold. No log-probabilities (the engine sent none): accept, since there is nothing
    to judge by; the cascade counts such answers separately."""
    if not logprobs:
        return OK
    if min_logprob is not None and min(logprobs) < min_logprob:
        return Verdict(False, LOGPROBS, f"a token's log-probability {min(logprobs):.2f} is below {min_logprob}")
    if mean_logprob is not None:
        mean = sum(logprobs) / len(logprobs)
        if mean < mean_logprob:
            return Verdict(False, LOGPROBS, f"mean log-probability {mean:.2f} is below {mean_logprob}")
    return OK


def chat_logprobs(response: Mapping[str, Any]) -> list[float]:
    """Token log-probabilities of the first choice of an OpenAI-style chat or completions
    response (`logprobs.content[].logprob`, or `logprobs.token_logprobs` of completions)."""
    return token_logprobs(response)


# --- refusal and uncertainty --------------------------------------------------------------

REFUSAL_PHRASES = (
    "i cannot",
    "i can't",
    "i can not",
    "i'm unable",
    "i am unable",
    "i'm not able",
    "i am not able",
    "i'm not sure",
    "i am not sure",
    "i don't know",
    "i do not know",
    "not enough information",
    "cannot be determined",
    "can't be determined",
    "it is unclear",
    "it's unclear",
    "as an ai",
    "i apologize",
    "i'm sorry",
)


def refusal_phrase(answer: str) -> str | None:
    lowered = answer.lower().replace("\u2019", "'")
    for phrase in REFUSAL_PHRASES:
        if phrase in lowered:
            return phrase
    return None


def verify_refusal(answer: str) -> Verdict:
    phrase = refusal_phrase(answer)
    return Verdict(False, REFUSAL, f"the answer says {phrase!r}") if phrase else OK


# --- arithmetic consistency ---------------------------------------------------------------

_ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
# "12 * 3 = 36", "4.5 + 2 = 6.5", "1,200 / 4 = 300": a plain calculation written out.
_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_INLINE = re.compile(rf"((?:{_NUMBER}\s*[-+*/x×÷]\s*)+{_NUMBER})\s*=\s*\$?({_NUMBER})(?![\d.]*\s*[-+*/x×÷]\s*\d)")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(expression: str) -> float | None:
    """The value of + - * / arithmetic on numbers, or None for anything else."""
    cleaned = expression.replace(",", "").replace("×", "*").replace("÷", "/").replace("x", "*").replace("$", "")
    if len(cleaned) > 200:
        return None
    try:
        tree = ast.parse(cleaned.strip(), mode="eval")
    except SyntaxError:
        return None

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        raise ValueError("not arithmetic")

    try:
        return walk(tree.body)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def _same_number(a: str, b: str) -> bool:
    """Whether two numbers are equal and finite (a number too long for a float is inf)."""
    x, y = _number(a), _number(b)
    return x is not None and math.isfinite(x) and x == y


def arithmetic_checks(answer: str) -> tuple[int, int]:
    """(calculations checked, calculations wrong) in a step-by-step answer. An answer with
    calculator annotations (`<<6*3=18>>`) is checked on those alone, since its prose
    repeats them ("6 * 3 = <<6*3=18>>18")."""
    checked = wrong = 0
    for expression, result in _ANNOTATION.findall(answer) or _INLINE.findall(answer):
        value, stated = _evaluate(expression), _number(result)
        # A number too long for a float (inf), or a stated "inf" or "nan": not checkable.
        if value is None or stated is None or not (math.isfinite(value) and math.isfinite(stated)):
            continue
        checked += 1
        if not math.isclose(value, stated, rel_tol=1e-2, abs_tol=1e-2):
            wrong += 1
    return checked, wrong


def verify_arithmetic(answer: str) -> Verdict:
    checked, wrong = arithmetic_checks(answer)
    return Verdict(False, ARITHMETIC, f"{wrong} of {checked} calculations are wrong") if wrong else OK


# --- signals for the trained verifier -----------------------------------------------------

_FINAL = re.compile(r"####\s*\$?(-?[\d,]*\.?\d+)")
_HEDGES = ("assum", "approximately", "roughly", "however", "but ", "wait", "actually", "hint", "note:", "if we")


def final_answer(answer: str) -> str | None:
    """The number after the last `####` (GSM8K's final-answer mark), if any."""
    found = _FINAL.findall(answer)
    return found[-1].replace(",", "") if found else None


_ANY_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "").rstrip(".") for n in _ANY_NUMBER.findall(text)}


def magnitude(final: str | None, prompt: str) -> str:
    """The final answer's size against the prompt's largest number, in powers of ten
    (rounded, -3 to 3): "0" when they are alike, "zero" for a final answer of 0, "-" when
    there is no final answer or the prompt has no number above 0.

    On the GSM8K data the small model is wrong on about 40% of answers the size of the
    prompt's largest number ("0") and about a quarter of those ten times larger or smaller:
    a final answer that only rearranges the given quantities, without the step that scales
    them, is a common way of going wrong."""
    value = None if final is None else _number(final)
    largest = max((n for n in (_number(n) for n in _numbers(prompt)) if n is not None), default=0.0)
    # A number too long for a float reads as inf: no size to compare by.
    if value is None or not math.isfinite(value) or not math.isfinite(largest) or largest <= 0:
        return "-"
    if value == 0:
        return "zero"
    # The difference of logarithms, not the log of the ratio: the ratio of two finite
    # numbers can overflow to inf or underflow to 0.
    return str(max(-3, min(3, round(math.log10(abs(value)) - math.log10(largest)))))


def answer_signals(answer: str, prompt: str = "", with_magnitude: bool = True) -> dict[str, str]:
    """Discrete signals of an answer to a prompt (values are short strings, used as
    features). Three of them look at both: how many of the prompt's numbers the answer
    never uses (a step-by-step answer that ignores a given quantity is wrong more often: on
    the GSM8K data about half of the time, against a third), whether the final answer is
    the result of the last calculation, and the final answer's `magnitude` against the
    prompt's numbers (left out with `with_magnitude` False, as version 1 answer features
    were trained)."""
    checked, wrong = arithmetic_checks(answer)
    final = final_answer(answer)
    lowered = answer.lower()
    results = [r.replace(",", "").replace("$", "").strip() for _, r in _ANNOTATION.findall(answer)]
    signals = {
        "unused": str(min(len(_numbers(prompt) - _numbers(answer)), 3)) if prompt else "-",
        "final_is_last": str(final is not None and bool(results) and _same_number(results[-1], final)),
        "checked": str(min(checked, 8)),
        "wrong": str(min(wrong, 3)),
        "final": "none" if final is None else ("int" if re.fullmatch(r"-?\d+", final) else "frac"),
        "negative": str(final is not None and final.startswith("-")),
        "refusal": str(refusal_phrase(answer) is not None),
        "lines": str(min(answer.count("\n"), 16) // 2),
        "chars": str(int(math.log2(1 + len(answer)))),
    }
    if with_magnitude:
        signals["magnitude"] = magnitude(final, prompt)
    for hedge in _HEDGES:
        if hedge in lowered:
            signals["hedge:" + hedge.strip()] = "1"
    return signals
