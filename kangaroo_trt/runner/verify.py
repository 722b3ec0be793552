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

from ..config import DecodeConfig
from .arrays import as_tensor, to_host


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
    """Speculative sampling where the logits are (the device, on a device backend): the rows' distributions, the
    acceptance coins and a draw from every row are computed in one batch, and one small read brings back the
    coins' outcomes and the draws. Drawn with a ``torch.Generator`` per device (seeded with ``seed``): repeatable
    on the same backend and device."""

    def __init__(self, temperature: float, top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> None:
        self.temperature, self.top_k, self.top_p, self.seed = temperature, top_k, top_p, seed
        self._generators: dict = {}

    def _generator(self, device):
        import torch

        if device not in self._generators:
            generator = self._generators[device] = torch.Generator(device=device)
            if self.seed is None:
                generator.seed()
            else:
                generator.manual_seed(self.seed)
        return self._generators[device]

    def distribution(self, logits):
        """p over the vocabulary per row of ``logits`` (float64 torch, where the logits are): softmax(logits /
        temperature), then top-k, then the top-p nucleus."""
        import torch

        z = as_tensor(logits).double() / self.temperature
        if 0 < self.top_k < z.shape[-1]:
            z = z.masked_fill(z < z.topk(self.top_k, dim=-1).values[..., -1:], -torch.inf)
        p = torch.softmax(z, dim=-1)
        if self.top_p < 1.0:
            ranked, order = p.sort(dim=-1, descending=True, stable=True)
            drop = ranked.cumsum(-1) - ranked >= self.top_p  # outside the smallest prefix whose mass reaches top_p
            p = p.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), 0.0)
            p = p / p.sum(-1, keepdim=True)
        return p

    def verify(self, drafts: list[int], targets: list[int], logits) -> tuple[int, int]:
        """Draft ``d_{i+1}`` is accepted with probability p_i(d); at the first rejection the token is drawn from p_i
        without d, after k acceptances from p_k. Every row's coin and draw are made at once (they are independent,
        so the draw of the row that decides is distributed as if drawn alone)."""
        import torch

        k = len(drafts)
        p = self.distribution(logits[:k + 1])
        generator, rows = self._generator(p.device), torch.arange(k, device=p.device)
        d = torch.as_tensor(drafts, dtype=torch.int64).to(p.device)
        coins = torch.rand(k, dtype=torch.float64, generator=generator, device=p.device) < p[rows, d]
        without = p.clone()
        without[rows, d] = 0.0
        certain = without.sum(-1, keepdim=True) <= 0.0  # the draft held all the mass: never rejected, its draw unused
        without = torch.where(certain, p, without)  # (no boolean indexing: that would wait for the device)
        draws = torch.multinomial(without, 1, generator=generator)[:, 0]
        out = to_host(torch.cat([coins.long(), draws])).tolist()  # the round's one read for the rule
        accepted = out[:k].index(0) if 0 in out[:k] else k
        return accepted, out[k + accepted]


def rule_for(config: DecodeConfig) -> Greedy | Sampling:
    return Greedy() if config.greedy else Sampling(config.temperature, config.top_k, config.top_p, config.seed)
