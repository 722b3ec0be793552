"""The lossless rule, as code: two greedy runs of one model must produce the same tokens.

Floating point can flip a true near-tie (the verify pass runs n tokens at once, AR runs one), so a
divergence is excused only when the target's top-1 vs top-2 logit margin at the first differing position
is below ``NEAR_TIE``; everything after that point is conditioned on a different prefix and not compared.
"""

from __future__ import annotations

from dataclasses import dataclass

NEAR_TIE = 1e-4


@dataclass(frozen=True)
class Comparison:
    equal: bool
    position: int | None = None  # first differing output position
    margin: float | None = None  # reference run's top-1 minus top-2 logit there

    @property
    def near_tie(self) -> bool:
        return not self.equal and self.margin is not None and self.margin < NEAR_TIE

    @property
    def ok(self) -> bool:
        return self.equal or self.near_tie

    def describe(self) -> str:
        if self.equal:
            return "identical"
        kind = "near-tie (allowed)" if self.near_tie else "MISMATCH"
        margin = "unknown" if self.margin is None else f"{self.margin:.3g}"
        return f"{kind} at output position {self.position}, top-2 margin {margin}"


def compare_tokens(reference: list[int], other: list[int], reference_margins: list[float] | None) -> Comparison:
    """Compare ``other`` against ``reference``; margins are the reference run's, one per output token."""
    for i, (a, b) in enumerate(zip(reference, other)):
        if a != b:
            margin = reference_margins[i] if reference_margins and i < len(reference_margins) else None
            return Comparison(False, i, margin)
    if len(reference) != len(other):
        return Comparison(False, min(len(reference), len(other)), None)
    return Comparison(True)
