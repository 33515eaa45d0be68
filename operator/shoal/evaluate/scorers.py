"""Scorers: one response and its item in, 1.0 (right), 0.0 (wrong) or None (skipped) out.

Every scorer is a pure function of the response text, the item and the scorer's
settings, so the same response always scores the same. The LLM judge is the exception
(it asks another model); it lives in ``judge.py`` and returns the same kind of score.

Answers are compared after light normalisation (case, surrounding whitespace, quotes and
final punctuation, repeated spaces), because a model that answers "Paris." to "What is
the capital of France?" is right. Anything stricter is what the regex scorer is for.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from shoal.api.modeltier import ScorerSpec

from .dataset import LETTERS, Item

_TYPE_TO_NAME = {
    "exactMatch": "exact_match",
    "contains": "contains",
    "regex": "regex",
    "choice": "choice",
    "jsonSchema": "json_schema",
    "numeric": "numeric",
    "llmJudge": "llm_judge",
}


class ScorerError(ValueError):
    """A scorer cannot score an item as configured (for example, no reference): fix the dataset."""


def metric_name(spec: ScorerSpec) -> str:
    """The scorer's metric name: its ``name``, or its type in snake_case."""
    return spec.name or _TYPE_TO_NAME[spec.type]


def normalize(text: str) -> str:
    text = " ".join(text.strip().split()).casefold()
    text = text.strip("\"'`")
    return text.rstrip(".!?;:,").strip()


def _references(item: Item) -> list[str]:
    if item.reference is None:
        raise ScorerError(f"item {item.id}: this scorer needs a reference")
    if isinstance(item.reference, list):
        return [str(r) for r in item.reference]
    if isinstance(item.reference, float) and item.reference.is_integer():
        return [str(int(item.reference))]
    return [str(item.reference)]


def exact_match(response: str, item: Item) -> float:
    answer = normalize(response)
    return 1.0 if any(answer == normalize(ref) for ref in _references(item)) else 0.0


def contains(response: str, item: Item) -> float:
    """The reference appears in the response as a whole word or phrase ("4" is not in "14").

    Numbers are better scored with ``numeric``: "0" is a whole word of "18.0".
    """
    answer = normalize(response)
    for ref in _references(item):
        wanted = normalize(ref)
        if not wanted:
            continue
        left = r"\b" if wanted[0].isalnum() else ""
        right = r"\b" if wanted[-1].isalnum() else ""
        if re.search(left + re.escape(wanted) + right, answer):
            return 1.0
    return 0.0


def regex(response: str, pattern: str) -> float:
    return 1.0 if re.search(pattern, response) else 0.0


_LETTER_PATTERNS = (
    # "B", "B.", "B)", "(B)", "**B**" at the very start of the answer (but not "A lot").
    r"^\W*\(?([A-Z])(?:[.):\]*]|\s*$)",
    # "The answer is B", "answer: (B)", "correct option is B".
    r"(?i:answer|option|choice)\s*(?:is|:)?\s*\(?([A-Z])\b(?![a-z'])",
)


def extract_choice(response: str, choices: list[str] | None) -> str | None:
    """The letter a multiple-choice answer picked, or None if it picked none or several."""
    valid = set(LETTERS[: len(choices)]) if choices else set(LETTERS)
    text = response.strip()
    for pattern in _LETTER_PATTERNS:
        match = re.search(pattern, text)
        if match and match.group(1) in valid:
            return match.group(1)
    if choices:
        # An answer that quotes exactly one option's text picked that option.
        answer = normalize(text)
        picked = [LETTERS[i] for i, choice in enumerate(choices) if normalize(choice) and normalize(choice) in answer]
        if len(picked) == 1:
            return picked[0]
    return None


def choice(response: str, item: Item) -> float:
    references = _references(item)
    right = {r.strip().upper() for r in references if len(r.strip()) == 1}
    if item.choices:
        # A reference given as the option's text counts as that option's letter.
        for ref in references:
            for i, option in enumerate(item.choices):
                if normalize(option) == normalize(ref):
                    right.add(LETTERS[i])
    if not right:
        raise ScorerError(f"item {item.id}: the choice scorer needs the right letter (or option text) as reference")
    return 1.0 if extract_choice(response, item.choices) in right else 0.0


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def extract_number(response: str) -> float | None:
    """The last number in the response ("7 + 5 = 12" -> 12.0; "1,234.5" -> 1234.5)."""
    found = _NUMBER.findall(response)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric(response: str, item: Item, tolerance: float) -> float:
    if item.reference is None or isinstance(item.reference, list):
        raise ScorerError(f"item {item.id}: the numeric scorer needs a number as reference")
    try:
        expected = float(item.reference)
    except ValueError as error:
        raise ScorerError(f"item {item.id}: reference {item.reference!r} is not a number") from error
    got = extract_number(response)
    if got is None or not math.isfinite(got):
        return 0.0
    # A little slack for binary floating point: 0.1 + 0.2 must equal 0.3 at tolerance 0.
    return 1.0 if abs(got - expected) <= tolerance + 1e-9 * max(1.0, abs(expected)) else 0.0


# --- JSON Schema, a small subset --------------------------------------------------------
# The keywords structured-output checks use in practice. Unknown keywords are ignored, as
# JSON Schema itself specifies; $ref, formats and conditionals are not supported.

_JSON_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
}


def schema_errors(value: Any, schema: Mapping[str, Any] | bool, path: str = "$") -> list[str]:
    """Why ``value`` does not validate against ``schema`` (empty when it does)."""
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [f"{path}: no value is allowed here"]
    errors: list[str] = []
    wanted = schema.get("type")
    if wanted is not None:
        types = [wanted] if isinstance(wanted, str) else list(wanted)
        if not any(_JSON_TYPES.get(t, lambda v: False)(value) for t in types):
            return [f"{path}: expected {' or '.join(types)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} is not {schema['const']!r}")
    if _JSON_TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{path}: {value} <= exclusiveMinimum {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errors.append(f"{path}: {value} >= exclusiveMaximum {schema['exclusiveMaximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: does not match {schema['pattern']!r}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, element in enumerate(value):
                errors += schema_errors(element, schema["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required property {key!r}")
        properties = schema.get("properties", {})
        for key, element in value.items():
            if key in properties:
                errors += schema_errors(element, properties[key], f"{path}.{key}")
            elif "additionalProperties" in schema:
                errors += schema_errors(element, schema["additionalProperties"], f"{path}.{key}")
    for sub in schema.get("allOf", []):
        errors += schema_errors(value, sub, path)
    if "anyOf" in schema and not any(not schema_errors(value, sub, path) for sub in schema["anyOf"]):
        errors.append(f"{path}: matches none of anyOf")
    if "oneOf" in schema and sum(1 for sub in schema["oneOf"] if not schema_errors(value, sub, path)) != 1:
        errors.append(f"{path}: does not match exactly one of oneOf")
    if "not" in schema and not schema_errors(value, schema["not"], path):
        errors.append(f"{path}: matches the schema under not")
    return errors


def extract_json(response: str) -> Any:
    """The JSON value in a response, allowing a surrounding ```json fence. Raises ValueError."""
    text = response.strip()
    fenced = re.search(r"```(?:json)?\s*\n?(.*?)```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    return json.loads(text)


def json_schema(response: str, schema: Mapping[str, Any]) -> float:
    try:
        value = extract_json(response)
    except ValueError:
        return 0.0
    return 0.0 if schema_errors(value, schema) else 1.0


def score(spec: ScorerSpec, response: str, item: Item) -> float | None:
    """Score one response with one (non-judge) scorer. None: the item opts out of it."""
    params = item.params_for(metric_name(spec), spec.type)
    if params.get("skip"):
        return None
    if spec.type == "exactMatch":
        return exact_match(response, item)
    if spec.type == "contains":
        return contains(response, item)
    if spec.type == "regex":
        pattern = params.get("pattern", spec.pattern)
        if not pattern:
            raise ScorerError(f"item {item.id}: the regex scorer has no pattern")
        return regex(response, pattern)
    if spec.type == "choice":
        return choice(response, item)
    if spec.type == "jsonSchema":
        schema = params.get("jsonSchema", spec.json_schema)
        return json_schema(response, schema if schema is not None else {})
    if spec.type == "numeric":
        tolerance = params.get("tolerance", spec.tolerance if spec.tolerance is not None else 0.0)
        return numeric(response, item, float(tolerance))
    raise ScorerError(f"scorer type {spec.type} is not scored locally")
