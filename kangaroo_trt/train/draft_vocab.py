"""A cheaper draft head: keep the adapter's LM-head rows of the tokens the model actually says most often.

The counts are the response tokens of the training data (what the adapter is trained to draft). Drafts
outside the kept tokens are impossible, but the deep graph still verifies over the full vocabulary, so the
output is unchanged; only the draft step gets cheaper (the 576 x 49152 head of SmolLM2-135M is most of a
draft step at exit layer 2). Training runs with the restricted head itself (``TrainConfig.draft_vocab``):
the adapter learns the softmax over the kept rows that inference drafts from, and each step's head is 12x
smaller at 4096 of 49152 tokens.
"""

from __future__ import annotations

import torch

from ..model.weights import AdapterCheckpoint, restrict_draft_vocab
from .teacher import SequenceFeatures


def response_token_counts(features: list[SequenceFeatures], vocab_size: int) -> torch.Tensor:
    """How often each token id occurs in the responses (positions from ``prompt_len`` on)."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for f in features:
        ids = f.input_ids[f.prompt_len:].long()
        counts.index_add_(0, ids, torch.ones(len(ids), dtype=torch.float64))
    return counts


def restrict(adapter: AdapterCheckpoint, features: list[SequenceFeatures], vocab_size: int, size: int,
             ) -> tuple[AdapterCheckpoint, float]:
    """``adapter`` with a ``size``-token draft head chosen from ``features``, and the coverage of their tokens."""
    counts = response_token_counts(features, vocab_size)
    adapter = restrict_draft_vocab(adapter, counts, size)
    coverage = float(counts[adapter.tensors["draft_vocab"]].sum() / counts.sum())
    adapter.meta["draft_vocab"] = {"size": size, "source": "response tokens of the training data",
                                   "coverage": round(coverage, 4)}
    return adapter, coverage
