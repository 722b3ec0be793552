"""The lossless check: Kangaroo's greedy tokens must equal plain greedy (AR) tokens on the same engines.

A divergence is tolerated only as a floating-point near-tie: at the first differing position the target's
top-1 minus top-2 logit (recorded by the AR run) is below ``NEAR_TIE_MARGIN``, so a different summation
order in the batched verify pass may legitimately pick the other token. Any other divergence is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..runner.api import GenerationResult

NEAR_TIE_MARGIN = 1e-4

MATCH, NEAR_TIE, MISMATCH = "match", "near_tie", "mismatch"


@dataclass(frozen=True)
class Equality:
    """How one Kangaroo output compares with its AR reference."""

    status: str  # MATCH | NEAR_TIE | MISMATCH
    position: int | None = None  # first differing output position
    margin: float | None = None  # AR's top-1 minus top-2 logit there (None: not recorded / past AR's end)
    kangaroo_token: int | None = None  # None: the output ended before this position
    ar_token: int | None = None

    @property
    def ok(self) -> bool:
        return self.status != MISMATCH

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "position": self.position, "margin": self.margin,
                "kangaroo_token": self.kangaroo_token, "ar_token": self.ar_token}


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where two token lists differ (a shorter list differs where it ends); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare_outputs(kangaroo: GenerationResult, ar: GenerationResult,
                    near_tie_margin: float = NEAR_TIE_MARGIN) -> Equality:
    """Compare output tokens; classify a divergence by AR's logit margin at the first differing position."""
    position = first_difference(kangaroo.output_ids, ar.output_ids)
    if position is None:
        return Equality(MATCH)
    margins = ar.margins or []
    margin = margins[position] if position < len(margins) else None
    status = NEAR_TIE if margin is not None and margin < near_tie_margin else MISMATCH
    return Equality(status, position, margin, _at(kangaroo.output_ids, position), _at(ar.output_ids, position))


def _at(tokens: list[int], i: int) -> int | None:
    return tokens[i] if i < len(tokens) else None
