"""Replay the cost policy (runner/policy.py, as Decoder.policy_round drives it) on headroom.py's recorded positions,
priced with headroom.py's measured quiet table: seconds instead of minutes per variant, no engine needed.

    PYTHONPATH=. .venv/bin/python bench/results/cost-policy/simulate.py bench/results/cost-policy/headroom.json [CAL.json]
    PYTHONPATH=. .venv/bin/python bench/results/cost-policy/simulate.py bench/results/cost-policy/headroom.json --variants

Approximation (as headroom.py's threshold rows): drafts after a wrong one are rejected whatever they are; their
confidence, which only decides how many are drafted, is taken as the true-prefix confidence at that position.
Prompt lookup is taken at gamma 5 copies at most. modelled.py decodes for real; use it to confirm a variant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from headroom import MEASURED, oracle  # noqa: E402

from kangaroo_trt.runner.policy import Calibration, DraftPolicy  # noqa: E402

GAMMA = 5


def replay(rec: dict, policy: DraftPolicy, c=MEASURED, gamma: int = GAMMA) -> tuple[float, int]:
    n, conf, right = rec["tokens"], rec["conf"], rec["right"]
    p, t, passes = 0, 0.0, 0
    while p < n:
        room = min(gamma, n - 1 - p)
        copied, ok = rec["lookup"][p]
        copied = min(copied, room)
        passes += 1
        if copied and (k := policy.lookup_count(rec["ngram"][p], copied)):
            acc = min(ok, k)
            t += c.lookup_round_ms(k)
            policy.observe(k, acc, acc + 1)
            p += acc + 1
            continue
        if room < 1 or not policy.start_adapter():
            t += c.plain_ms
            policy.observe(0, 0, 1)
            p += 1
            continue
        drafts, rows = 0, 0
        for j in range(room):
            rows += 1
            choice = policy.after_draft(conf[p + j] if p + j < n else 0.0, room)
            if choice == "drop":
                break
            drafts += 1
            if choice == "keep":
                break
        acc = 0
        while acc < drafts and right[p + acc]:
            acc += 1
        t += c.adapter_round_ms(drafts, rows)
        policy.observe(drafts, acc, acc + 1)
        p += acc + 1
    return t, passes


def shipped() -> Calibration:
    cfg = json.loads((Path(__file__).parents[3] / "kangaroo_trt/adapters/smollm2-135m/adapter_config.json").read_text())
    return Calibration.from_dict(cfg["meta"]["calibration"])


def summary(recs: list[dict], make=lambda: DraftPolicy(MEASURED, shipped()), gamma: int = GAMMA) -> dict:
    """Per set (demo / unseen / spec): overall modelled speedup and the worst prompt's."""
    groups: dict = {}
    for r in recs:
        ar = r["tokens"] * MEASURED.plain_ms
        t, _ = replay(r, make(), gamma=gamma)
        groups.setdefault(r["name"].split("-")[0].rstrip("0123456789"), []).append((ar, t))
    return {g: (sum(a for a, _ in v) / sum(t for _, t in v), min(a / t for a, t in v)) for g, v in groups.items()}


def variants(recs: list[dict]) -> None:
    """The variants README.md reports (each one change to the shipped policy)."""
    import copy

    from kangaroo_trt.runner import policy as P

    cal = shipped()

    def true_prefix_calibration() -> Calibration:  # fitted on these very positions (in-sample: an upper bound)
        conf = np.array([c for r in recs for c in r["conf"]])
        ok = np.array([x for r in recs for x in r["right"]], float)
        prev = np.array([r["right"][i - 1] if i else 0 for r in recs for i in range(len(r["right"]))])
        b = np.minimum(np.searchsorted(np.array(cal.edges), conf), len(cal.edges) - 1)
        fit = [lambda m: float((ok[m].sum() + 2 * ok.mean()) / (m.sum() + 2))][0]
        return Calibration(first=tuple(fit(b == i) for i in range(10)), later=tuple(fit((b == i) & (prev == 1)) for i in range(10)),
                           lookup=cal.lookup, lookup_later=cal.lookup_later, mean_later=float(ok[prev == 1].mean()))

    def records(f):
        return [f(copy.deepcopy(r)) for r in recs]

    def lookups(f):
        def g(r):
            r["lookup"] = [f(k, ok) for k, ok in r["lookup"]]
            return r
        return records(g)

    def constant(name, value):
        def run():
            old = getattr(P, name)
            setattr(P, name, value)
            try:
                return summary(recs)
            finally:
                setattr(P, name, old)
        return run

    rows = {
        "this policy": lambda: summary(recs),
        "calibration fitted on these positions (in-sample)": lambda: summary(recs, lambda: DraftPolicy(MEASURED, true_prefix_calibration())),
        "adapter prior factor 0.5 (cautious start)": lambda: summary(recs, lambda: DraftPolicy(MEASURED, cal, adapter_outcomes=P.Outcomes(1.0, 2.0))),
        "adapter prior factor 1.25 (bold start)": lambda: summary(recs, lambda: DraftPolicy(MEASURED, cal, adapter_outcomes=P.Outcomes(2.5, 2.0))),
        "MEMORY 0.7 (faster per-request learning)": constant("MEMORY", 0.7),
        "MEMORY 0.95 (slower)": constant("MEMORY", 0.95),
        "PROBE_EVERY 1 (adapter every round)": constant("PROBE_EVERY", 1),
        "PROBE_EVERY 4": constant("PROBE_EVERY", 4),
        "SEEN_MEMORY 0.8": constant("SEEN_MEMORY", 0.8),
        "SEEN_MEMORY 0.95": constant("SEEN_MEMORY", 0.95),
        "SEEN_PRIOR 1": constant("SEEN_PRIOR", 1.0),
        "SEEN_PRIOR 3": constant("SEEN_PRIOR", 3.0),
        "gamma 7": lambda: summary(recs, gamma=7),
        "no prompt lookup": lambda: summary(lookups(lambda k, ok: (0, 0))),
        "lookups perfect (only right ones, exact length)": lambda: summary(lookups(lambda k, ok: (ok, ok))),
    }
    print("| variant (replayed, measured quiet table) | demo | unseen overall (worst) | spec overall (worst) |")
    print("|---|---|---|---|")
    for name, run in rows.items():
        out = run()
        print(f"| {name} | " + " | ".join(f"{out[g][0]:.3f}x" + (f" ({out[g][1]:.2f})" if g != "demo" else "")
                                         for g in ("demo", "unseen", "spec")) + " |")


def main() -> None:
    recs = json.loads(Path(sys.argv[1]).read_text())
    if "--variants" in sys.argv:
        variants(recs)
        return
    cal = Calibration.from_dict(json.loads(Path(sys.argv[2]).read_text())) if len(sys.argv) > 2 else shipped()
    for r in recs:
        ar = r["tokens"] * MEASURED.plain_ms
        t, passes = replay(r, DraftPolicy(MEASURED, cal))
        print(f"{r['name']:22} {ar / t:.2f}x  tpp {r['tokens'] / passes:.2f}  oracle {ar / oracle(r, MEASURED):.2f}x")
    for g, (overall, worst) in summary(recs, lambda: DraftPolicy(MEASURED, cal)).items():
        print(f"{g:22} overall {overall:.2f}x  worst {worst:.2f}x")


if __name__ == "__main__":
    main()
