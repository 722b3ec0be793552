"""The paper's training objective and the metrics logged with it.

The draft distribution q = softmax(head(RMSNorm_2(adapter(h_l)))) is trained towards the target's
next-token distribution p with the soft cross-entropy ``-sum_v p(v) log q(v)``, on response positions
only. p is kept as its top-k (renormalised for the loss); the metrics are

* expected acceptance ``sum_v min(p(v), q(v))`` over the teacher's top-k (a lower bound of the full sum):
  the probability that a sampled draft would be accepted;
* top-1 agreement: argmax q == argmax p, what greedy Kangaroo accepts.

With a restricted draft head (``draft_vocab``) q is the softmax over the kept rows, as at inference; the
teacher's tokens outside them count as misses and carry no loss (``token_rows`` maps them to -1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.graphs import AdapterGraph
from ..model.layers import step_for


def draft_logits(adapter: AdapterGraph, hidden: torch.Tensor, first: int) -> torch.Tensor:
    """fp32 draft logits ``[n - first, V]`` for exit states ``hidden [n, H]`` (one sequence, empty caches).

    Same computation as ``AdapterGraph.logits`` with no past, but the LM head (most of the cost) runs only
    on positions ``first..`` (the response positions the loss needs).
    """
    n = hidden.shape[0]
    position_ids = torch.arange(n, device=hidden.device)[None]
    spec = adapter.layers["0"].self_attn
    slots = hidden.new_zeros(1, spec.kv_heads, n, spec.head_dim)  # a cache of n empty slots the rows fill
    x, _, _ = adapter.layers["0"](hidden[None], step_for(adapter.rotary, position_ids, n), slots, slots)  # [1, n, H]
    return adapter.head(x[0, first:])


def token_rows(adapter: AdapterGraph, vocab_size: int) -> torch.Tensor | None:
    """Token id -> row of the adapter's restricted draft head (-1 for tokens it does not keep), built once per
    run; None for a full head (rows are token ids)."""
    vocab = adapter.draft_vocab
    if vocab is None:
        return None
    rows = torch.full((vocab_size,), -1, dtype=torch.long, device=vocab.device)
    rows[vocab] = torch.arange(len(vocab), device=vocab.device)
    return rows


@dataclass
class Metrics:
    """Sums over tokens; ``mean()`` gives per-token values."""

    loss: float = 0.0
    acceptance: float = 0.0
    top1: float = 0.0
    tokens: int = 0

    def add(self, other: "Metrics") -> None:
        self.loss += other.loss
        self.acceptance += other.acceptance
        self.top1 += other.top1
        self.tokens += other.tokens

    def mean(self) -> dict[str, float]:
        n = max(self.tokens, 1)
        return {"loss": self.loss / n, "acceptance": self.acceptance / n, "top1": self.top1 / n, "tokens": self.tokens}


def soft_cross_entropy(logits: torch.Tensor, topk_ids: torch.Tensor, topk_probs: torch.Tensor,
                       ) -> tuple[torch.Tensor, Metrics]:
    """Summed soft cross-entropy over positions (for backward) and the detached metric sums.

    ``topk_ids`` are rows of the head (``token_rows``); -1 marks a teacher token the head cannot draft."""
    log_q = torch.log_softmax(logits, dim=-1)
    ids = topk_ids.long()
    kept = ids >= 0
    p = topk_probs.float()
    log_q_top = log_q.gather(-1, ids.clamp(min=0)) * kept  # [T, k]
    loss = -((p / p.sum(-1, keepdim=True)) * log_q_top).sum()
    with torch.no_grad():
        acceptance = (torch.minimum(p, log_q_top.exp()) * kept).sum()
        top1 = (logits.argmax(-1) == ids[:, 0]).sum()
    return loss, Metrics(loss.item(), acceptance.item(), top1.item(), int(ids.shape[0]))
