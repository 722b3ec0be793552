"""TensorRT optimization profiles, derived from each graph's ``GraphSpec`` and the engine's export settings.

The only dynamic dimension is ``n`` (new tokens per call); caches are static ``[1, kv_heads, S_max, D]``.
Two profiles cover every call the decoding loop makes, and the runtime keeps one execution context per
profile (``runner/trt_backend.py``), so no call switches profiles:

=========  ============================  ==========================================================
profile    n: min / opt / max            calls
=========  ============================  ==========================================================
step       1 / 1 / max_verify            draft step (1), adapter catch-up (2), verify (<= gamma + 1)
prefill    1 / chunk / chunk             prompt chunks (the last one is shorter)
=========  ============================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import GraphSpec

PROFILE_NAMES = ("step", "prefill")


@dataclass(frozen=True)
class Profile:
    name: str
    n_min: int
    n_opt: int
    n_max: int

    def covers(self, n: int) -> bool:
        return self.n_min <= n <= self.n_max

    def shapes(self, spec: GraphSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Input name -> (min, opt, max) shape; static inputs (the caches) get their one shape three times."""
        return {t.name: (t.concrete(self.n_min), t.concrete(self.n_opt), t.concrete(self.n_max)) for t in spec.inputs}

    def to_dict(self) -> dict:
        return {"name": self.name, "n": [self.n_min, self.n_opt, self.n_max]}


def profiles(max_verify: int, prefill_chunk: int) -> tuple[Profile, ...]:
    step = Profile("step", 1, 1, max_verify)
    prefill = Profile("prefill", 1, prefill_chunk, max(prefill_chunk, 1))
    return (step, prefill)


def pick(available: tuple[Profile, ...], n: int) -> int:
    """Index of the profile a call with ``n`` new tokens runs under: the step profile when it fits."""
    for i, p in enumerate(available):
        if p.covers(n):
            return i
    raise ValueError(f"no optimization profile covers n={n} (profiles: {[p.to_dict() for p in available]})")

