"""Assertions of the lossless rule shared by the test modules (see kangaroo_trt/runner/equality.py)."""

from kangaroo_trt.runner.equality import NEAR_TIE, compare_tokens


class NearTies:
    """Counts excused divergences so a test can report them; any other divergence fails at once."""

    def __init__(self) -> None:
        self.cases: list[str] = []

    def check(self, reference, other, label: str, reference_margins=None) -> None:
        margins = reference_margins if reference_margins is not None else reference.margins
        ref_ids = reference if isinstance(reference, list) else reference.output_ids
        verdict = compare_tokens(ref_ids, other.output_ids, margins)
        assert verdict.ok, f"{label}: {verdict.describe()}\n  reference {ref_ids}\n  other     {other.output_ids}"
        if verdict.status == NEAR_TIE:
            self.cases.append(f"{label}: {verdict.describe()}")
