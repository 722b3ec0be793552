"""The cost-aware drafting policy: each round drafts only as far as the expected committed tokens pay for the time.

A round with k drafts commits ``1 + P_1 + .. + P_k`` tokens on average (P_i: the chance drafts 1..i are all
accepted) and costs its graph calls (``costs.py``). With ``rate`` the tokens per millisecond the request can
already count on (at least plain decoding's), the round's value is ``tokens - rate * time``; the policy picks
the k (zero included) with the highest value:

* prompt lookup: how many of the copied tokens to verify, from the chance a copy is right given its n-gram
  match (``Calibration.lookup``);
* adapter drafts, one at a time: after each draft, its confidence (calibrated to an acceptance chance per
  position, ``Calibration.first`` / ``later``) decides between verifying without it, stopping with it, or
  drafting on (later drafts assumed as likely as the calibration's mean);
* whether to run the adapter at all: what an adapter round is worth against a plain step, averaged over the first
  drafts' confidences this request has seen (recent ones weigh most), each valued with the current correction
  factor; a request where that does not pay takes plain steps, with a probe every ``PROBE_EVERY`` plain steps so
  that it can recover.

Per-request learning: verified drafts' outcomes against their predicted chances give a correction factor
(recent rounds weigh most) that scales the calibration for the rest of the request. How often the first draft is
confident and how often a draft of a given confidence is right are learnt apart, so that a request whose confident
drafts are rare but right keeps drafting for them, and one whose drafts fail stops, whatever their confidence.

Only the drafts change: the deep pass verifies whatever is proposed with the same rule, so output is unchanged.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field

from .costs import CostTable

PROBE_EVERY = 8  # plain steps between adapter probes once adapter rounds stopped paying
MAX_P = 0.98  # no draft is certain
PRIOR_WEIGHT = 2.0  # the calibration counts as this many verified drafts against the request's own outcomes
MEMORY = 0.9  # per verified draft, older outcomes weigh this much less
RATE_PRIOR = 4.0  # plain steps counted into the achieved rate, so that one lucky round does not set it
SEEN_MEMORY = 0.9  # per adapter round, older first-draft confidences weigh this much less
SEEN_PRIOR = 2.0  # until first drafts of this weight were seen, the request drafts (the calibration says it pays)


@dataclass(frozen=True)
class Calibration:
    """Chance that a draft is accepted, measured on real prompts through an engine (``runner/calibrate.py``).

    ``edges``: upper edges of the confidence bins; ``first[b]``: acceptance of a first adapter draft in bin b,
    ``later[b]``: of a later one given the previous was accepted; ``lookup[n - 1]``: of a first copied token
    after an n-token match (the last entry for longer ones), ``lookup_later[n - 1]``: of each next copied token.
    """

    edges: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    first: tuple[float, ...] = (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95)
    later: tuple[float, ...] = (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95)
    lookup: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6)
    lookup_later: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9)
    mean_later: float = 0.4  # acceptance of a later adapter draft whose confidence is not known yet
    samples: int = 0  # verified drafts behind the numbers (0: the uncalibrated identity map above)

    def __post_init__(self) -> None:
        if not (len(self.edges) == len(self.first) == len(self.later)) or not self.edges or not self.lookup:
            raise ValueError("calibration: edges, first and later need one entry per bin, lookup at least one")
        if len(self.lookup_later) != len(self.lookup):
            raise ValueError("calibration: lookup and lookup_later need one entry per n-gram length")

    def bin(self, confidence: float) -> int:
        return min(bisect.bisect_left(self.edges, confidence), len(self.edges) - 1)

    def adapter(self, confidence: float, position: int) -> float:
        return (self.first if position == 1 else self.later)[self.bin(confidence)]

    def lookup_chance(self, ngram: int, position: int) -> float:
        return (self.lookup if position == 1 else self.lookup_later)[min(ngram, len(self.lookup)) - 1]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(**{k: tuple(float(x) for x in v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class Outcomes:
    """Verified drafts of one kind in this request: accepted count against predicted chances, recent ones first."""

    accepted: float = PRIOR_WEIGHT
    predicted: float = PRIOR_WEIGHT

    @property
    def factor(self) -> float:
        return self.accepted / self.predicted

    def add(self, chances: list[float], accepted: int) -> None:
        """Drafts past the first rejected one were never judged: only positions up to it count."""
        for i, p in enumerate(chances[:accepted + 1]):
            self.accepted = self.accepted * MEMORY + (i < accepted)
            self.predicted = self.predicted * MEMORY + p


@dataclass
class DraftPolicy:
    """One request's drafting decisions (``Decoder.policy_round`` asks, ``observe`` tells it what happened)."""

    costs: CostTable
    calibration: Calibration = field(default_factory=Calibration)
    adapter_outcomes: Outcomes = field(default_factory=Outcomes)
    lookup_outcomes: Outcomes = field(default_factory=Outcomes)
    seen: list[float] = field(default_factory=list)  # weighted count of first drafts per confidence bin
    room: int = 0  # the most drafts the last adapter round could verify
    plain_streak: int = 0
    tokens: float = 0.0
    time_ms: float = 0.0
    _basis: list[float] = field(default_factory=list)  # the calibration's chances of this round's drafts (uncorrected)
    _kind: str = "plain"

    # --- what a round is worth ----------------------------------------------------------------------------
    @property
    def rate(self) -> float:
        """Tokens per ms the request can count on: plain decoding's, or what its rounds achieved if more."""
        plain = 1.0 / self.costs.plain_ms
        return max(plain, (self.tokens + RATE_PRIOR) / (self.time_ms + RATE_PRIOR * self.costs.plain_ms))

    def _value(self, chances: list[float], time_ms: float) -> float:
        expected, together = 1.0, 1.0
        for p in chances:
            together *= p
            expected += together
        return expected - self.rate * time_ms

    def _plain_value(self) -> float:
        return 1.0 - self.rate * self.costs.plain_ms

    @staticmethod
    def _corrected(basis: list[float], outcomes: Outcomes) -> list[float]:
        """The calibration's chances ``basis`` scaled by this request's correction factor (none certain)."""
        return [min(MAX_P, p * outcomes.factor) for p in basis]

    def _later_p(self) -> float:
        return self._corrected([self.calibration.mean_later], self.adapter_outcomes)[0]

    def _plan(self, kind: str, basis: list[float]) -> None:
        self._kind, self._basis = kind, basis

    def _adapter_values(self, known: list[float], j: int, room: int) -> dict[int, float]:
        """Value of verifying k = j - 1 .. room adapter drafts, the first j chances known (later ones: the mean)."""
        later, c = self._later_p(), self.costs
        return {k: self._value(known[:k] + [later] * (k - j), c.adapter_round_ms(k, max(k, j)))
                for k in range(j - 1, room + 1)}

    @property
    def gain(self) -> float:
        """What an adapter round is worth over a plain step, in tokens (>= 0: draft): its best choice after the first
        draft, averaged over the first drafts' confidence bins seen, each valued with today's correction factor.
        0 until SEEN_PRIOR first drafts were seen (the calibration says drafting pays)."""
        total = sum(self.seen)
        if total < SEEN_PRIOR:
            return 0.0
        room, f, later = max(self.room, 1), self.adapter_outcomes.factor, self._later_p()
        times = [self.costs.adapter_round_ms(k, max(k, 1)) for k in range(room + 1)]
        plain = self._plain_value()
        return sum(w * (max(self._value(([min(MAX_P, p * f)] + [later] * room)[:k], times[k]) for k in range(room + 1))
                        - plain) for w, p in zip(self.seen, self.calibration.first) if w > 1e-3 * total) / total

    # --- decisions ----------------------------------------------------------------------------------------
    def lookup_count(self, ngram: int, available: int) -> int:
        """How many of ``available`` copied tokens (after an ``ngram``-token match) to verify; 0: none."""
        c = self.costs
        basis = [self.calibration.lookup_chance(ngram, i + 1) for i in range(available)]
        chances = self._corrected(basis, self.lookup_outcomes)
        values = [self._value(chances[:k], c.lookup_round_ms(k)) for k in range(available + 1)]
        best = max(range(available + 1), key=values.__getitem__)
        if best and values[best] - values[0] > max(self.gain, 0.0):
            self._plan("lookup", basis[:best])
            return best
        return 0

    def start_adapter(self) -> bool:
        """Whether this round runs the adapter (else it is a plain step)."""
        self._plan("plain", [])
        if self.plain_streak >= PROBE_EVERY or self.gain >= 0.0:
            self._kind = "adapter"
            return True
        return False

    def after_draft(self, confidence: float, room: int) -> str:
        """After the adapter proposed draft j (confidence given): "drop" it (verify drafts 1..j-1), "keep" it and
        stop, or draft "more" (at most ``room`` drafts in all)."""
        j = len(self._basis) + 1
        if j == 1:  # how confident this request's first drafts are
            self.seen = [w * SEEN_MEMORY for w in self.seen or [0.0] * len(self.calibration.edges)]
            self.seen[self.calibration.bin(confidence)] += 1.0
            self.room = room
        basis = self._basis + [self.calibration.adapter(confidence, j)]
        values = self._adapter_values(self._corrected(basis, self.adapter_outcomes), j, room)
        best = max(values, key=values.__getitem__)
        if best >= j:
            self._basis = basis
        if best == j - 1 or best == j:
            return "keep" if best == j else "drop"
        return "more"

    def plan_adapter(self, room: int) -> int:
        """How many adapter drafts (at most ``room``; 0: a plain step) a round drafts without reading them as they
        come (a device backend's round, ``Decoder.policy_round``): every draft counts as likely as the calibration's
        mean, corrected by this request's outcomes; after PROBE_EVERY plain steps one draft is verified anyway (the
        correction learns only from verified drafts). Call after ``start_adapter``."""
        later = self._later_p()
        values = [self._value([later] * k, self.costs.adapter_round_ms(k, k)) for k in range(room + 1)]
        best = max(range(room + 1), key=values.__getitem__)
        if not best and room and self.plain_streak >= PROBE_EVERY:
            best = 1
        self._plan("adapter" if best else "plain", [self.calibration.mean_later] * best)
        return best

    # --- learning ---------------------------------------------------------------------------------------
    def observe(self, drafts: int, accepted: int, committed: int) -> None:
        """What the round's deep pass judged: corrects the calibration and the achieved rate.

        The correction factor is learnt against the calibration's own chances, not the corrected ones the round
        was valued with: against those it would settle near the square root of the true ratio (too little)."""
        c = self.costs
        if self._kind == "lookup":
            self.lookup_outcomes.add(self._basis[:drafts], accepted)
            time_ms = c.lookup_round_ms(drafts)
        elif self._kind == "adapter":
            self.adapter_outcomes.add(self._basis[:drafts], accepted)
            time_ms = c.adapter_round_ms(drafts, drafts + 1)
        else:
            time_ms = c.plain_ms
        self.plain_streak = self.plain_streak + 1 if self._kind == "plain" else 0
        self.tokens += committed
        self.time_ms += time_ms
        self._plan("plain", [])
