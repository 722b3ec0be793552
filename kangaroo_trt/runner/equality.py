"""The lossless rule, as code: Kangaroo's greedy tokens must equal plain greedy (AR) tokens on the same graphs.

In exact mode (the default, ``runner/decode.py``) every divergence is a bug: the rows are bitwise the same
either way. Without it (``exact=False``), or against another runtime (transformers), a divergence is tolerated
only as a floating-point near-tie: at the first differing position the target's top-1 minus top-2 logit (recorded
by the reference run) is below ``NEAR_TIE_MARGIN``, so a different summation order may legitimately pick the
other token. Everything after that point is conditioned on a different prefix and not compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NEAR_TIE_MARGIN = 1e-4

MATCH, NEAR_TIE, MISMATCH = "match", "near_tie", "mismatch"


def tie_margin(exact: bool) -> float:
    """The near-tie margin Kangaroo-vs-AR comparisons allow: none in exact mode."""
    return 0.0 if exact else NEAR_TIE_MARGIN
SAMPLED = "sampled"  # outputs sampled at a temperature: equal in distribution, never compared token for token


@dataclass(frozen=True)
class Equality:
    """How one output compares with its reference (AR, or transformers for AR itself)."""

    status: str  # MATCH | NEAR_TIE | MISMATCH | SAMPLED
    position: int | None = None  # first differing output position
    margin: float | None = None  # the reference's top-1 minus top-2 logit there (None: not recorded / past its end)
    kangaroo_token: int | None = None  # the compared output's token there (None: it ended before)
    ar_token: int | None = None  # the reference's token there

    @property
    def ok(self) -> bool:
        return self.status != MISMATCH

    def describe(self) -> str:
        if self.status == MATCH:
            return "identical"
        if self.status == SAMPLED:
            return "sampled (equal in distribution, not compared token for token)"
        margin = "unknown" if self.margin is None else f"{self.margin:.3g}"
        kind = "near-tie (allowed)" if self.status == NEAR_TIE else "MISMATCH"
        return f"{kind} at output position {self.position} ({self.kangaroo_token} vs {self.ar_token}), top-2 margin {margin}"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "position": self.position, "margin": self.margin,
                "kangaroo_token": self.kangaroo_token, "ar_token": self.ar_token}


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where two token lists differ (a shorter list differs where it ends); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare_tokens(reference: list[int], other: list[int], reference_margins: list[float] | None,
                   near_tie_margin: float = NEAR_TIE_MARGIN) -> Equality:
    """Compare ``other`` with ``reference``; classify a divergence by the reference's margin where it starts."""
    position = first_difference(other, reference)
    if position is None:
        return Equality(MATCH)
    margins = reference_margins or []
    margin = margins[position] if position < len(margins) else None
    status = NEAR_TIE if margin is not None and margin < near_tie_margin else MISMATCH
    return Equality(status, position, margin, _at(other, position), _at(reference, position))


def compare_outputs(kangaroo, ar, near_tie_margin: float = NEAR_TIE_MARGIN) -> Equality:
    """Compare two ``GenerationResult``s; the AR one must have been run with ``record_margins=True``."""
    return compare_tokens(ar.output_ids, kangaroo.output_ids, ar.margins, near_tie_margin)


def _at(tokens: list[int], i: int) -> int | None:
    return tokens[i] if i < len(tokens) else None
