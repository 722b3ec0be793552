"""A cheaper draft head: keep the adapter's LM-head rows of the tokens the model actually says most often.

The counts are the response tokens of the (self-distilled) training data, i.e. what greedy decoding of the
target produces. Drafts outside the kept tokens are impossible, but the deep graph still verifies over the
full vocabulary, so the output is unchanged; only the draft step gets cheaper (the 576 x 49152 head of
SmolLM2-135M is most of a draft step at exit layer 2).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..model.weights import load_adapter, restrict_draft_vocab, save_checkpoint
from .teacher import SequenceFeatures


def response_token_counts(features: list[SequenceFeatures], vocab_size: int) -> torch.Tensor:
    """How often each token id occurs in the responses (positions from ``prompt_len`` on)."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for f in features:
        ids = f.input_ids[f.prompt_len:].long()
        counts.index_add_(0, ids, torch.ones(len(ids), dtype=torch.float64))
    return counts


def restrict_saved_adapter(adapter_dir: Path, features: list[SequenceFeatures], vocab_size: int, size: int) -> float:
    """Rewrite the adapter in ``adapter_dir`` with a ``size``-token draft head; returns the training-token coverage."""
    counts = response_token_counts(features, vocab_size)
    adapter = restrict_draft_vocab(load_adapter(adapter_dir), counts, size)
    coverage = float(counts[adapter.tensors["draft_vocab"]].sum() / counts.sum())
    adapter.meta["draft_vocab"] = {"size": size, "source": "response tokens of the training data",
                                   "coverage": round(coverage, 4)}
    save_checkpoint(adapter, adapter_dir)
    return coverage
