"""Which tokens a deep (verify) pass commits: greedy, or lossless speculative sampling.

A round drafted ``d_1 .. d_k`` and the deep pass over ``[t_0, d_1 .. d_k]`` gave the target's logits
``z_0 .. z_k`` (``z_i`` predicts the token after position i). Both rules commit the accepted drafts plus
one target token (the correction, or a bonus token when every draft was accepted):

* ``Greedy`` (the paper's rule): accept the longest prefix with ``d_{i+1} == argmax z_i``, then commit
  ``argmax z_accepted``. The output equals plain greedy decoding token for token.
* ``Sampling`` (temperature > 0): drafts stay the adapter's argmax, i.e. a deterministic proposal
  ``q = onehot(d)``. Speculative sampling (Leviathan et al., 2023; Chen et al., 2023) with that ``q``
  accepts ``d_{i+1}`` with probability ``min(1, p_i(d) / q(d)) = p_i(d)`` and otherwise samples from
  ``norm(max(0, p_i - q))``, which is ``p_i`` with ``d`` removed; after k acceptances the bonus token is
  drawn from ``p_k``. Each committed token is therefore distributed exactly as in plain sampling from
  ``p_i`` (the same logits, temperature, top-k and top-p), so the output distribution is unchanged; the
  random draws differ between modes, so a seed gives repeatable but mode-specific text.
"""

from __future__ import annotations

import numpy as np

from ..config import DecodeConfig
from .arrays import to_host


def accepted_prefix(drafts: list[int], targets: list[int]) -> int:
    """Length of the longest prefix with draft d_{i+1} == target y_i."""
    a = 0
    while a < len(drafts) and drafts[a] == targets[a]:
        a += 1
    return a


class Greedy:
    def verify(self, drafts: list[int], targets: list[int], logits) -> tuple[int, int]:
        """(number of drafts accepted, the target token committed after them; a plain step has no drafts)."""
        accepted = accepted_prefix(drafts, targets)
        return accepted, targets[accepted]


class Sampling:
    def __init__(self, temperature: float, top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> None:
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.rng = np.random.default_rng(seed)

    def distribution(self, logits) -> np.ndarray:
        """p over the vocabulary (float64): softmax(logits / temperature), then top-k, then the top-p nucleus."""
        z = to_host(logits).astype(np.float64) / self.temperature
        if 0 < self.top_k < z.size:
            z[z < np.partition(z, -self.top_k)[-self.top_k]] = -np.inf
        p = np.exp(z - z.max())
        p /= p.sum()
        if self.top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            keep = np.cumsum(p[order]) - p[order] < self.top_p  # the smallest prefix whose mass reaches top_p
            p[order[~keep]] = 0.0
            p /= p.sum()
        return p

    def draw(self, weights: np.ndarray) -> int:
        """A token with probability proportional to ``weights`` (never one of weight 0)."""
        cumulative = np.cumsum(weights)
        return min(int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right")), weights.size - 1)

    def verify(self, drafts: list[int], targets: list[int], logits) -> tuple[int, int]:
        for i, draft in enumerate(drafts):
            p = self.distribution(logits[i])
            if self.rng.random() < p[draft]:
                continue  # accepted with probability p_i(d)
            p[draft] = 0.0  # rejected: resample from p_i without d (p_i(d) < 1 here, so mass remains)
            return i, self.draw(p)
        return len(drafts), self.draw(self.distribution(logits[len(drafts)]))


def rule_for(config: DecodeConfig) -> Greedy | Sampling:
    return Greedy() if config.greedy else Sampling(config.temperature, config.top_k, config.top_p, config.seed)
