"""Run the benchmark: every question's turns with Kangaroo and plain AR on the same engines, in one process.

Per turn both modes decode the same prompt greedily with margins recorded (or, with a temperature, both
sample with the same seed: then outputs agree in distribution only and are not compared); the order of the modes
alternates from turn to turn so neither always runs on a warmer cache. A second turn is asked after the
model's own first answer (AR's output, which Kangaroo must reproduce). Ctrl-C stops the run and keeps
every question finished so far.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..config import MODES, DecodeConfig
from ..runner.api import GenerationResult, KangarooEngine
from ..runner.equality import SAMPLED, Equality, compare_outputs, tie_margin
from .questions import Question

WARMUP_TOKENS = 16


@dataclass(frozen=True)
class BenchConfig:
    """What every question is decoded with: ``decode`` (from ``engine.decode_config``) in both modes.

    With a temperature > 0 both modes sample (lossless speculative sampling); turn i uses seed ``decode.seed + i``
    (seed None: 0 + i).
    """

    decode: DecodeConfig
    warmup: bool = True


@dataclass
class TurnRun:
    """One user turn decoded by every method."""

    results: dict[str, GenerationResult]  # "kangaroo", "ar", and "hf" when the transformers baseline runs
    equality: Equality


@dataclass
class QuestionRun:
    question: Question
    turns: list[TurnRun] = field(default_factory=list)
    skipped: str | None = None  # why the question was not benchmarked (then ``turns`` is empty)

    @property
    def ok(self) -> bool:
        return all(t.equality.ok for t in self.turns)


@dataclass
class BenchRun:
    questions: list[Question]  # the selection asked for
    decode: DecodeConfig  # gamma, tau and max_new_tokens every Kangaroo run used
    prompt_format: str
    baseline: str | None = None  # name of the extra method, if one ran
    runs: list[QuestionRun] = field(default_factory=list)  # finished questions, in order
    interrupted: bool = False

    @property
    def completed(self) -> list[QuestionRun]:
        return [r for r in self.runs if r.skipped is None]


class Baseline(Protocol):
    """An extra method timed on the same prompt ids (e.g. transformers ``generate``)."""

    name: str

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> GenerationResult: ...


class BenchRunner:
    """Decodes questions on one engine; ``baseline`` adds a third, optional method."""

    def __init__(self, engine: KangarooEngine, config: BenchConfig, baseline: Baseline | None = None) -> None:
        self.engine, self.config, self.baseline = engine, config, baseline
        self.decode = config.decode
        engine.decode_config(**dataclasses.asdict(config.decode))  # validates the settings for this engine early
        self.chat = engine.manifest.has_chat_template
        self._turn_index = 0

    @property
    def prompt_format(self) -> str:
        return "chat template" if self.chat else "plain text (the model has no chat template)"

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The model's chat template over the conversation; plain text joined by blank lines without one."""
        if self.chat:
            return self.engine.encode(messages, chat=True)
        return self.engine.encode("\n\n".join(m["content"] for m in messages), chat=False)

    def fits(self, prompt_ids: list[int]) -> bool:
        return len(prompt_ids) <= self.engine.manifest.max_seq_len - 1

    def warm_up(self, question: Question) -> None:
        """A short untimed generation per method, so no timed run pays for first-call allocations."""
        ids = self.prompt_ids([{"role": "user", "content": question.turns[0]}])
        if not self.fits(ids):
            ids = ids[-(self.engine.manifest.max_seq_len // 2):]
        budget = min(WARMUP_TOKENS, self.decode.max_new_tokens)
        for mode in MODES:
            self._generate(mode, ids, budget)
        if self.baseline is not None:
            self.baseline.generate(ids, budget)

    def run_question(self, question: Question) -> QuestionRun:
        """All turns of a question; skipped whole if a turn's prompt does not fit the engine's cache."""
        run, messages = QuestionRun(question), []
        for number, text in enumerate(question.turns, start=1):
            messages.append({"role": "user", "content": text})
            ids = self.prompt_ids(messages)
            if not self.fits(ids):
                return QuestionRun(question, skipped=(
                    f"turn {number} prompt has {len(ids)} tokens, the engine's cache holds "
                    f"{self.engine.manifest.max_seq_len} (rebuild with a larger --max-seq-len)"))
            turn = self.run_turn(ids)
            run.turns.append(turn)
            messages.append({"role": "assistant", "content": turn.results["ar"].text})
        return run

    def run_turn(self, prompt_ids: list[int]) -> TurnRun:
        """Every method on the same prompt; the starting method rotates from turn to turn."""
        methods = list(MODES) + ([self.baseline.name] if self.baseline is not None else [])
        shift = self._turn_index % len(methods)
        self._turn_index += 1
        results = {}
        for method in methods[shift:] + methods[:shift]:
            if method in MODES:
                results[method] = self._generate(method, prompt_ids, self.decode.max_new_tokens)
            else:
                results[method] = self.baseline.generate(prompt_ids, self.decode.max_new_tokens)
        sampled = not self.decode.greedy
        return TurnRun(results, Equality(SAMPLED) if sampled else compare_outputs(results["kangaroo"], results["ar"],
                                                                                    tie_margin(self.engine.exact)))

    def _generate(self, mode: str, prompt_ids: list[int], max_new_tokens: int) -> GenerationResult:
        # Both modes record margins (one top-2 per committed token), so the cost is the same on both sides.
        config = dataclasses.replace(self.decode, mode=mode, max_new_tokens=max_new_tokens,
                                     seed=(self.decode.seed or 0) + self._turn_index)
        return self.engine.generate(prompt_ids=prompt_ids, config=config, record_margins=True)


def run_bench(engine: KangarooEngine, questions: list[Question], config: BenchConfig,
              baseline: Baseline | None = None,
              progress: Callable[[QuestionRun], None] | None = None) -> BenchRun:
    """Benchmark ``questions`` in order; Ctrl-C ends the run early with ``interrupted`` set."""
    runner = BenchRunner(engine, config, baseline)
    bench = BenchRun(list(questions), runner.decode, runner.prompt_format, baseline.name if baseline else None)
    try:
        if config.warmup and questions:
            runner.warm_up(questions[0])
        for question in questions:
            bench.runs.append(runner.run_question(question))
            if progress is not None:
                progress(bench.runs[-1])
    except KeyboardInterrupt:
        bench.interrupted = True
    return bench
