"""Benchmark questions: the Spec-Bench file shipped with the package, or any file in its format.

One JSON object per line: ``question_id``, ``category``, ``turns`` (the user turns; a second turn is asked
after the model's own first answer). Spec-Bench groups its questions into six tasks; the eight MT-Bench
categories (writing, roleplay, ...) together form the ``mt_bench`` task (multi-turn conversation). Any other
category is its own task, so custom files work unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..bundled import default_questions_path
from ..errors import InputError
from ..textio import check_json_text, jsonl_lines, read_text

MT_BENCH_CATEGORIES = frozenset(
    {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
)
# Spec-Bench's order of its six tasks; tasks of custom files follow in order of first appearance.
SPEC_BENCH_TASKS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]

    @property
    def task(self) -> str:
        """The Spec-Bench task this question is reported under."""
        return "mt_bench" if self.category in MT_BENCH_CATEGORIES else self.category



def load_questions(path: str | Path | None = None) -> list[Question]:
    """Read a question file (default: Spec-Bench); a malformed line is an ``InputError`` naming it."""
    path = Path(path) if path is not None else default_questions_path()
    text = read_text(path, "question file")
    questions = [_parse(line, f"{path}:{number}") for number, line in jsonl_lines(text)]
    if not questions:
        raise InputError(f"question file {path} holds no questions")
    return questions


def _parse(line: str, where: str) -> Question:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{where} is not valid JSON ({err.msg}): one JSON object per line is expected") from err
    check_json_text(record, where)
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object with question_id, category, turns")
    missing = [key for key in ("question_id", "category", "turns") if key not in record]
    if missing:
        raise InputError(f"{where} lacks {', '.join(missing)}: every question needs question_id, category, turns")
    turns = record["turns"]
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t for t in turns):
        raise InputError(f"{where}: turns must be a non-empty list of non-empty strings")
    return Question(record["question_id"], str(record["category"]), tuple(turns))


def tasks_in(questions: list[Question]) -> list[str]:
    """The tasks present, Spec-Bench's six first in their usual order."""
    present = list(dict.fromkeys(q.task for q in questions))
    return [t for t in SPEC_BENCH_TASKS if t in present] + [t for t in present if t not in SPEC_BENCH_TASKS]


def select(questions: list[Question], tasks: list[str] | None = None, limit: int | None = None) -> list[Question]:
    """The first ``limit`` questions of each task in ``tasks`` (all tasks when None), in file order."""
    known = tasks_in(questions)
    if tasks:
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise InputError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}: "
                             f"choose from {', '.join(known)}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1 (questions per category), got {limit}")
    wanted = set(tasks or known)
    taken: dict[str, int] = {}
    chosen = []
    for q in questions:
        if q.task in wanted and (limit is None or taken.get(q.task, 0) < limit):
            taken[q.task] = taken.get(q.task, 0) + 1
            chosen.append(q)
    return chosen
