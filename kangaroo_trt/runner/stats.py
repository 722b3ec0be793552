"""Acceptance metrics of Kangaroo rounds, kept outside the decoding loop.

* mean accepted tokens (#MAT): tokens committed per deep (verify) pass.
* accepted_by_position[i]: of the rounds that proposed draft i+1, the fraction that accepted it.
* CTAR(w): over every round and every window of w consecutive drafts it proposed, the fraction of
  windows in which all w drafts were accepted (acceptance is prefix-wise, so a window is accepted iff it
  ends within the accepted prefix). Reported for w = 1..gamma. With tau = 0 every round drafts gamma
  tokens and the curve falls as w grows, as in the paper; with tau > 0 a window of w exists only in rounds
  whose drafts stayed confident, so CTAR(w) is conditioned on that and can rise with w.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import DecodeConfig


@dataclass
class AcceptanceLog:
    drafted: list[int] = field(default_factory=list)  # drafts proposed per round
    accepted: list[int] = field(default_factory=list)  # drafts accepted per round
    committed: list[int] = field(default_factory=list)  # tokens committed per round

    def add(self, drafted: int, accepted: int, committed: int) -> None:
        self.drafted.append(drafted)
        self.accepted.append(accepted)
        self.committed.append(committed)

    def extend(self, other: "AcceptanceLog") -> None:
        self.drafted += other.drafted
        self.accepted += other.accepted
        self.committed += other.committed

    @property
    def rounds(self) -> int:
        return len(self.committed)

    @property
    def mean_accepted(self) -> float:
        return sum(self.committed) / self.rounds if self.rounds else 0.0

    def accepted_by_position(self, gamma: int) -> list[float | None]:
        out = []
        for i in range(1, gamma + 1):
            proposed = [a for d, a in zip(self.drafted, self.accepted) if d >= i]
            out.append(sum(a >= i for a in proposed) / len(proposed) if proposed else None)
        return out

    def ctar(self, gamma: int) -> list[float | None]:
        out = []
        for w in range(1, gamma + 1):
            windows = hits = 0
            for d, a in zip(self.drafted, self.accepted):
                starts = max(0, d - w + 1)  # windows [s, s + w) inside the d drafts
                windows += starts
                hits += max(0, min(starts, a - w + 1))  # windows ending inside the accepted prefix
            out.append(hits / windows if windows else None)
        return out

    def histogram(self, gamma: int) -> list[int]:
        """How many rounds accepted 0, 1, .., gamma drafts."""
        counts = [0] * (gamma + 1)
        for a in self.accepted:
            counts[min(a, gamma)] += 1
        return counts


@dataclass(kw_only=True)
class GenerationStats:
    """What one generation cost and how its rounds went; constructed by keyword.

    ``config``: the generation's decoding settings, whole; ``to_dict`` reports every field of it under "decode" (a
    new decoding option is reported with no change here), and the mode, gamma, tau and sampling settings at the top
    as before. ``mode``: the config's, unless another generator names itself (the transformers baseline: "hf").
    """

    config: DecodeConfig
    backend: str
    device: str
    precision: str
    new_tokens: int
    prompt_tokens: int
    total_s: float
    prefill_s: float
    draft_s: float
    verify_s: float
    acceptance: AcceptanceLog
    mode: str = ""

    def __post_init__(self) -> None:
        self.mode = self.mode or self.config.mode

    @property
    def gamma(self) -> int:
        """The most drafts per round: the config's for Kangaroo, 0 for a generator that drafts none."""
        return self.config.gamma if self.mode == "kangaroo" else 0

    @property
    def tau(self) -> float:
        return self.config.tau

    @property
    def sampling(self) -> dict[str, Any] | None:
        """temperature, top_k, top_p and seed; None for greedy decoding."""
        c = self.config
        return None if c.greedy else {"temperature": c.temperature, "top_k": c.top_k, "top_p": c.top_p, "seed": c.seed}

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        log, kangaroo = self.acceptance, self.mode == "kangaroo"
        return {
            "tokens_per_s": self.tokens_per_s,
            "new_tokens": self.new_tokens,
            "prompt_tokens": self.prompt_tokens,
            "rounds": log.rounds,
            "mean_accepted": log.mean_accepted,
            "accepted_by_position": log.accepted_by_position(self.gamma) if kangaroo else [],
            "ctar": log.ctar(self.gamma) if kangaroo else [],
            "accepted_histogram": log.histogram(self.gamma) if kangaroo else [],
            "total_s": self.total_s,
            "prefill_s": self.prefill_s,
            "draft_s": self.draft_s,
            "verify_s": self.verify_s,
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "mode": self.mode,
            "gamma": self.gamma,
            "tau": self.tau,
            "sampling": self.sampling,
            "decode": asdict(self.config),
        }
