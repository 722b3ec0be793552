"""Prompt lookup drafting: drafts copied from the context instead of predicted (Saxena, 2023).

Summaries, RAG answers, code edits and multi-turn chats repeat spans of their context. When the context's last
``n`` tokens occurred earlier in it, the tokens that followed that occurrence are a free guess of what comes
next. The longest such suffix wins (up to ``LONGEST`` tokens, at least ``min_ngram``), then its latest
occurrence. The guess is a deterministic function of the context, so the deep pass verifies it with the same
rules as the adapter's drafts (``verify.py``: greedy, or speculative sampling with a one-hot proposal) and the
output is unchanged.
"""

from __future__ import annotations

import numpy as np

LONGEST = 8  # longest suffix matched; longer matches rarely change which occurrence is chosen


def lookup_drafts(context: list[int], min_ngram: int, count: int) -> list[int]:
    """Up to ``count`` tokens that followed the latest earlier occurrence of the context's longest repeated
    suffix (of at least ``min_ngram`` tokens); [] when there is none."""
    return lookup_match(context, min_ngram, count)[0]


def lookup_match(context: list[int], min_ngram: int, count: int) -> tuple[list[int], int]:
    """``lookup_drafts`` and the length of the matched suffix (0 when there is no draft)."""
    if min_ngram < 1 or count < 1 or len(context) < 2:
        return [], 0
    ctx = np.asarray(context)
    ends = np.flatnonzero(ctx[:-1] == ctx[-1])  # where an earlier occurrence of the last token sits
    n = 1
    while ends.size and n < min(LONGEST, len(ctx) - 1):  # grow the matched suffix while some occurrence still fits
        longer = ends[ends >= n]
        longer = longer[ctx[longer - n] == ctx[-1 - n]]
        if not longer.size:
            break
        ends, n = longer, n + 1
    if not ends.size or n < min_ngram:
        return [], 0
    start = int(ends[-1]) + 1
    drafts = ctx[start:start + count].tolist()
    return drafts, n if drafts else 0
