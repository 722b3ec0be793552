"""Assertions of the lossless rule shared by the test modules (see kangaroo_trt/runner/equality.py)."""

import numpy as np

from kangaroo_trt.runner.arrays import snapshot, to_host
from kangaroo_trt.runner.equality import NEAR_TIE, compare_tokens, tie_margin


class NearTies:
    """Counts excused divergences so a test can report them; any other divergence fails at once.

    ``exact`` (the default: Kangaroo against AR on one engine in exact mode): no divergence is excused. Pass
    False against another runtime (transformers), where rounding may flip a near-tie."""

    def __init__(self, exact: bool = True) -> None:
        self.cases: list[str] = []
        self.exact = exact

    def check(self, reference, other, label: str, reference_margins=None) -> None:
        margins = reference_margins if reference_margins is not None else reference.margins
        ref_ids = reference if isinstance(reference, list) else reference.output_ids
        verdict = compare_tokens(ref_ids, other.output_ids, margins, tie_margin(self.exact))
        assert verdict.ok, f"{label}: {verdict.describe()}\n  reference {ref_ids}\n  other     {other.output_ids}"
        if verdict.status == NEAR_TIE:
            self.cases.append(f"{label}: {verdict.describe()}")


def assert_adapter_cache_in_step(decoder, state, committed: list[int], at_least: int) -> None:
    """Each valid row of the adapter's cache (at least ``at_least`` of them; ``state``: the generation's, after its
    last round) must hold the key and value that one adapter pass over the ``committed`` sequence gives: catches a
    dropped or misplaced catch-up of lagging states."""
    valid = state.adapter_length
    assert valid >= at_least, f"only {valid} adapter cache rows are valid: several rounds must have been committed"
    kept = {name: to_host(buf[:, :, :valid]) for name, buf in decoder.adapter.caches.items()}
    positions = np.arange(valid, dtype=np.int64)[None]
    hidden = decoder.shallow.run({"input_ids": np.array([committed[:valid]], np.int64), "position_ids": positions}, 0)["hidden"]
    decoder.adapter.run({"hidden": snapshot(hidden), "position_ids": positions}, 0)
    for name, rows in kept.items():
        err = np.abs(rows - to_host(decoder.adapter.caches[name][:, :, :valid])).max()
        assert err < 1e-4, f"adapter cache {name} differs from a fresh pass by {err:.2e}"
