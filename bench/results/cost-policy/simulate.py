"""Replay the cost policy (runner/policy.py, as Decoder.policy_round drives it) on headroom.py's recorded positions,
priced with headroom.py's measured quiet table: seconds instead of minutes per variant, no engine needed.

    PYTHONPATH=. .venv/bin/python bench/results/cost-policy/simulate.py headroom.json [CALIBRATION.json]

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
            policy.observe(k, acc, acc + 1, **_extra(policy, None))
            p += acc + 1
            continue
        if room < 1 or not policy.start_adapter():
            t += c.plain_ms
            policy.observe(0, 0, 1, **_extra(policy, None))
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
        # what the deep pass says of the first draft the adapter proposed, dropped or not
        policy.observe(drafts, acc, acc + 1, **_extra(policy, bool(right[p])))
        p += acc + 1
    return t, passes


def _extra(policy, first_right):
    return {"first_right": first_right} if "first_right" in DraftPolicy.observe.__code__.co_varnames else {}


def main() -> None:
    recs = json.loads(Path(sys.argv[1]).read_text())
    cal = Calibration.from_dict(json.loads(Path(sys.argv[2]).read_text())) if len(sys.argv) > 2 else None
    if cal is None:
        cfg = json.loads(Path("kangaroo_trt/adapters/smollm2-135m/adapter_config.json").read_text())
        cal = Calibration.from_dict(cfg["meta"]["calibration"])
    groups: dict = {}
    for r in recs:
        ar = r["tokens"] * MEASURED.plain_ms
        t, passes = replay(r, DraftPolicy(MEASURED, cal))
        g = r["name"].split("-")[0].rstrip("0123456789")
        groups.setdefault(g, []).append((ar, t, oracle(r, MEASURED)))
        print(f"{r['name']:22} {ar / t:.2f}x  tpp {r['tokens'] / passes:.2f}  oracle {ar / oracle(r, MEASURED):.2f}x")
    for g, rows in groups.items():
        ar, t = sum(x[0] for x in rows), sum(x[1] for x in rows)
        print(f"{g:22} overall {ar / t:.2f}x  worst {min(x[0] / x[1] for x in rows):.2f}x")


if __name__ == "__main__":
    main()
