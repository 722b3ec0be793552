"""Calibrate the drafting policy's acceptance chances on real prompts through an engine.

Every round drafts as far as it may (gamma adapter drafts, or every copied token) and records, per verified
draft, what predicted it (the adapter's confidence and position, or the n-gram match of a copy) and whether the
deep pass accepted it; drafts after the first rejected one were never judged and are not counted. The counts
become a ``Calibration`` (acceptance per confidence bin, smoothed toward the overall rate where a bin has few
drafts, and made non-decreasing in the confidence), which the adapter's meta stores (``calibration``) and the
engine reads from its manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .lookup import LONGEST
from .policy import Calibration, DraftPolicy

SMOOTHING = 8.0  # pseudo-drafts at the overall rate added to every bin


@dataclass
class Recorder(DraftPolicy):
    """A policy that drafts as far as allowed and records what each verified draft was predicted by."""

    adapter_seen: list[tuple[float, int, bool]] = field(default_factory=list)  # confidence, position, accepted
    lookup_seen: list[tuple[int, int, bool]] = field(default_factory=list)  # n-gram match, position, accepted
    _confidences: list[float] = field(default_factory=list)
    _ngram: int = 0

    def lookup_count(self, ngram: int, available: int) -> int:
        self._kind, self._ngram = "lookup", ngram
        return available

    def start_adapter(self) -> bool:
        self._kind, self._confidences = "adapter", []
        return True

    def after_draft(self, confidence: float, room: int) -> str:
        self._confidences.append(confidence)
        return "more" if len(self._confidences) < room else "keep"

    def observe(self, drafts: int, accepted: int, committed: int) -> None:
        judged = range(min(drafts, accepted + 1))
        if self._kind == "lookup":
            self.lookup_seen += [(self._ngram, i + 1, i < accepted) for i in judged]
        elif self._kind == "adapter":
            self.adapter_seen += [(self._confidences[i], i + 1, i < accepted) for i in judged]
        self._kind = "plain"

    def fitted(self, edges: tuple[float, ...] = Calibration.edges) -> Calibration:
        """The acceptance chances the recorded drafts give (raises if no adapter draft was recorded)."""
        if not self.adapter_seen:
            raise ValueError("no adapter draft was verified: calibrate on longer or more prompts")
        conf, pos, ok = (np.array(x, float) for x in zip(*self.adapter_seen))

        def rate(mask) -> float:
            return float(ok[mask].mean()) if mask.any() else 0.0

        def binned(mask) -> tuple[float, ...]:
            overall, out = rate(mask), []
            bins = np.minimum(np.searchsorted(np.array(edges), conf, side="left"), len(edges) - 1)
            for b in range(len(edges)):
                m = mask & (bins == b)
                out.append((ok[m].sum() + SMOOTHING * overall) / (m.sum() + SMOOTHING))
            return tuple(round(float(x), 4) for x in np.maximum.accumulate(out))

        def by_ngram(first: bool) -> tuple[float, ...]:
            seen = [(g, a) for g, i, a in self.lookup_seen if (i == 1) == first]
            overall = (sum(a for _, a in seen) + 1) / (len(seen) + 2)
            out: list[float | None] = []
            for n in range(1, LONGEST + 1):
                hits = [a for g, a in seen if g == n]
                out.append((sum(hits) + SMOOTHING * overall) / (len(hits) + SMOOTHING) if hits else None)
            known = [x for x in out if x is not None] or [overall]
            filled, last = [], known[0]  # a length never matched: as the next shorter one (below all: the shortest)
            for x in out:
                last = x if x is not None else last
                filled.append(last)
            return tuple(round(float(x), 4) for x in np.maximum.accumulate(filled))

        return Calibration(edges=tuple(edges), first=binned(pos == 1), later=binned(pos > 1), lookup=by_ngram(True),
                           lookup_later=by_ngram(False), mean_later=round(rate(pos > 1), 4),
                           samples=len(self.adapter_seen))


def calibrate(engine, prompts: list[list[int]], max_new_tokens: int = 96) -> Calibration:
    """Decode ``prompts`` (token ids) with ``engine`` (a ``KangarooEngine``), recording every draft's outcome."""
    recorder = Recorder(engine.cost_table())
    config = engine.decode_config(gamma=engine.manifest.max_verify - 1, max_new_tokens=max_new_tokens, policy="cost")
    for ids in prompts:
        for _ in engine.decoder.generate(ids, config, policy=recorder):
            pass
    return recorder.fitted()
