"""Evaluation datasets: JSON Lines, one item per line.

An item is an object with:

- ``prompt`` (a string, sent as the one user message) or ``messages`` (an OpenAI chat
  message list, sent as is). Exactly one of the two.
- ``reference``: the expected answer. A string, a number, or a list of acceptable
  strings. Scorers that need none (jsonSchema) accept items without it.
- ``choices`` (optional): the options of a multiple-choice item. With ``prompt`` they are
  appended to it as lettered lines ("A. ..."), and ``reference`` is the right letter.
- ``id`` (optional): a name for the item in reports; defaults to its line number.
- ``scorers`` (optional): per-item settings keyed by scorer name or type, overriding the
  scorer's own (``{"numeric": {"tolerance": 0.5}}``, ``{"regex": {"pattern": "..."}}``,
  ``{"json_schema": {"jsonSchema": {...}}}``), or ``{"skip": true}`` to leave the item
  out of that metric.

Blank lines and lines starting with ``#`` are ignored. Anything else that does not parse
is an error naming its line: a dataset that loads partly would give a verdict about
items nobody chose.

The dataset's digest (sha256 of its bytes) goes into the verdict, so a recorded
evaluation says exactly what it was computed on.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Reference = str | float | int | list[str] | None


class DatasetError(ValueError):
    """The dataset cannot be used as written: fix the file (the message names the line)."""


@dataclass(frozen=True)
class Item:
    id: str
    messages: list[dict[str, Any]]
    reference: Reference = None
    choices: list[str] | None = None
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def params_for(self, name: str, type_: str) -> Mapping[str, Any]:
        """This item's settings for a scorer, looked up by its name and then its type."""
        if name in self.params:
            return self.params[name]
        return self.params.get(type_, {})


@dataclass(frozen=True)
class Dataset:
    items: list[Item]
    digest: str  # "sha256:<hex>" of the raw bytes

    def __len__(self) -> int:
        return len(self.items)


LETTERS = string.ascii_uppercase


def format_choices(prompt: str, choices: list[str]) -> str:
    lines = [prompt.rstrip(), ""]
    lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices)]
    lines += ["", "Answer with the letter of the correct option."]
    return "\n".join(lines)


def _item(raw: Any, line: int) -> Item:
    if not isinstance(raw, dict):
        raise DatasetError(f"line {line}: an item must be a JSON object, got {type(raw).__name__}")
    unknown = set(raw) - {"id", "prompt", "messages", "reference", "choices", "scorers"}
    if unknown:
        raise DatasetError(f"line {line}: unknown field(s) {', '.join(sorted(unknown))}")
    if ("prompt" in raw) == ("messages" in raw):
        raise DatasetError(f"line {line}: set exactly one of prompt or messages")
    choices = raw.get("choices")
    if choices is not None:
        if not (isinstance(choices, list) and 2 <= len(choices) <= len(LETTERS) and all(isinstance(c, str) for c in choices)):
            raise DatasetError(f"line {line}: choices must be a list of 2 to 26 strings")
    if "prompt" in raw:
        prompt = raw["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DatasetError(f"line {line}: prompt must be a non-empty string")
        content = format_choices(prompt, choices) if choices else prompt
        messages = [{"role": "user", "content": content}]
    else:
        messages = raw["messages"]
        if not (
            isinstance(messages, list)
            and messages
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in messages)
        ):
            raise DatasetError(f"line {line}: messages must be a non-empty list of {{role, content}} objects")
    reference = raw.get("reference")
    if reference is not None and not isinstance(reference, (str, int, float, list)):
        raise DatasetError(f"line {line}: reference must be a string, a number or a list of strings")
    if isinstance(reference, list) and not all(isinstance(r, str) for r in reference):
        raise DatasetError(f"line {line}: a reference list must hold strings")
    params = raw.get("scorers", {})
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise DatasetError(f"line {line}: scorers must map scorer names to objects")
    item_id = raw.get("id", f"line-{line}")
    return Item(id=str(item_id), messages=messages, reference=reference, choices=choices, params=params)


def parse(data: bytes) -> Dataset:
    """Parse a JSON Lines dataset. Raises DatasetError naming the first bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(f"the dataset is not UTF-8: {error}") from error
    items: list[Item] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            raw = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise DatasetError(f"line {number}: not JSON: {error.msg}") from error
        item = _item(raw, number)
        if item.id in seen:
            raise DatasetError(f"line {number}: duplicate item id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise DatasetError("the dataset has no items")
    return Dataset(items=items, digest="sha256:" + hashlib.sha256(data).hexdigest())


def load_path(path: Path) -> Dataset:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DatasetError(f"cannot read the dataset at {path}: {error.strerror}") from error
    return parse(data)


async def load_uri(uri: str, *, client: Any) -> Dataset:
    """Fetch a dataset over http(s) with the given ``httpx.AsyncClient``.

    ``s3://`` and ``gs://`` URIs are not fetched by this program: the evaluation Job
    is expected to copy them into the pod first (or to use a presigned https URL);
    asking for one here is a DatasetError saying so.
    """
    if uri.startswith(("s3://", "gs://")):
        raise DatasetError(
            f"{uri}: object-store datasets must be copied into the pod (or given as a presigned https URL); "
            "pass the local copy with --dataset"
        )
    if not uri.startswith(("http://", "https://")):
        raise DatasetError(f"{uri}: unsupported dataset URI (use a file path, http:// or https://)")
    import httpx  # a core dependency; imported here so parsing stays importable without it

    try:
        response = await client.get(uri, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise DatasetError(f"cannot fetch the dataset from {uri}: {error}") from error
    return parse(response.content)
