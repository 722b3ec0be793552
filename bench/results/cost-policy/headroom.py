"""Headroom of drafting on real prompts: what an oracle that knew which drafts are right could reach, and what a
confidence threshold reaches, priced with a fixed quiet cost table (no wall clock: load does not matter).

    PYTHONPATH=. .venv/bin/python bench/results/cost-policy/headroom.py [--spec N] [--new 96] [--json OUT]

Per prompt: greedy AR gives the sequence s. One shallow pass and one adapter pass over all of s give, at every
position i of the continuation, the adapter's first draft given the true prefix (the draft that follows s[i]) and its
confidence; ``right[i]``: it equals s[i + 1]. A chain of right drafts from i is the run of consecutive right
positions (a right draft is the true token, so the next draft is again a first draft given the true prefix). Prompt
lookup (n-gram >= 2, as decoding uses it) at i: how many of its copied tokens are right.

Policies, simulated round by round from position to position (gamma = 5 drafts at most, as modelled.py):
* oracle: knows every outcome, picks per round plain / k adapter drafts / k copied tokens to minimise total time
  (dynamic programming); ``oracle-adapter``: the same without lookup; ``oracle-probe``: must run the adapter's first
  draft each round to decide (pays its adapter row also when it then takes a plain step);
* threshold th: lookup when a copy exists (all copied tokens), else draft while the confidence is >= th (the draft
  below th is dropped; a first draft below th makes the round a plain step). After a wrong draft the real drafts'
  confidences are unknown here; the true-prefix confidence at that position stands in for them (approximation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from kangaroo_trt.runtimes import share_thread_pool

share_thread_pool(None)
from kangaroo_trt.runner.api import KangarooEngine  # noqa: E402
from kangaroo_trt.runner.costs import CostTable  # noqa: E402
from kangaroo_trt.runner.decode import positions  # noqa: E402
from kangaroo_trt.runner.lookup import lookup_match  # noqa: E402

R = 8
# The table measured on a quiet machine (limit12-quiet/report.md): deep 28.68 ms, +1.53 ms per further row.
MEASURED = CostTable((28.68, 31.06, 32.60, 34.13, 35.66, 37.19, 38.72, 40.25),
                     (1.82, 1.82, 1.85, 1.95, 2.05, 2.15, 2.26, 2.36), 1.17)
# modelled.py's older quiet table: deep 25 ms, 27 ms for 2 rows, +2 ms per further row.
OLD = CostTable(tuple([25.0] + [27.0 + 2.0 * (r - 1) for r in range(1, R)]), tuple(1.5 + 0.1 * r for r in range(R)), 1.2)
DEMO = "Explain in three sentences why the sky is blue."
HERE = Path(__file__).parent


def collect(engine, prompt: str, new: int) -> dict:
    ids = engine.encode([{"role": "user", "content": prompt}], chat=True)
    ar = engine.generate(prompt_ids=ids, mode="ar", config=engine.decode_config(max_new_tokens=new), record_margins=True)
    out = ar.output_ids
    s = ids + out
    d, P = engine.decoder, len(ids)
    hidden = np.concatenate([d._shallow(s[i:i + d.prefill_chunk], i, pad=False)
                             for i in range(0, len(s), d.prefill_chunk)], axis=1)
    drafts, conf = [0] * len(s), [0.0] * len(s)
    for i in range(0, P - 1, d.prefill_chunk):  # the prompt's rows fill the adapter's cache
        rows = hidden[:, i:min(i + d.prefill_chunk, P - 1)]
        d.adapter.run({"hidden": rows, "position_ids": positions(i, rows.shape[1])}, i)
    for i in range(P - 1, len(s)):  # the adapter drafts from its last row only: one row at a time
        o = d.adapter.run({"hidden": hidden[:, i:i + 1], "position_ids": positions(i, 1)}, i)
        drafts[i], conf[i] = int(o["draft_ids"][0, -1]), float(o["draft_confidence"][0, -1])
    span = range(P - 1, len(s) - 1)  # t_0 positions: the draft after s[i] guesses s[i + 1]
    right = [int(drafts[i] == s[i + 1]) for i in span]
    look, ngram = [], []
    for i in span:
        copied, n = lookup_match(s[:i + 1], 2, 5)
        k = 0
        while k < len(copied) and i + 1 + k < len(s) and copied[k] == s[i + 1 + k]:
            k += 1
        look.append((len(copied), k))
        ngram.append(n)
    return {"prompt": prompt, "tokens": len(out), "conf": [conf[i] for i in span], "right": right,
            "lookup": look, "ngram": ngram, "tokens_from_t0": s[P - 1:], "drafts": [drafts[i] for i in span],
            "margins": ar.margins}


def runs(right: list[int]) -> list[int]:
    out, r = [0] * (len(right) + 1), 0
    for i in range(len(right) - 1, -1, -1):
        r = r + 1 if right[i] else 0
        out[i] = r
    return out[:-1]


def oracle(rec: dict, c: CostTable, gamma: int = 5, lookup: bool = True, probe: bool = False) -> float:
    n = rec["tokens"]
    run = runs(rec["right"])
    T = [0.0] * (n + 1)
    for p in range(n - 1, -1, -1):
        plain = c.plain_ms + (c.adapter if probe else 0.0)
        best = plain + T[p + 1]
        for k in range(1, min(run[p], gamma, n - 1 - p) + 1):
            best = min(best, c.adapter_round_ms(k, k) + T[p + k + 1])
        if lookup:
            for k in range(1, min(rec["lookup"][p][1], n - 1 - p) + 1):
                best = min(best, c.lookup_round_ms(k) + T[p + k + 1])
        T[p] = best
    return T[0]


def threshold(rec: dict, c: CostTable, th: float, gamma: int = 5, lookup: bool = True) -> tuple[float, int]:
    n, conf, right = rec["tokens"], rec["conf"], rec["right"]
    p, t, passes = 0, 0.0, 0
    while p < n:
        room = min(gamma, n - 1 - p)
        copied, ok = rec["lookup"][p]
        passes += 1
        if lookup and copied and room:
            k = min(copied, room)
            t += c.lookup_round_ms(k)
            p += min(ok, k) + 1
            continue
        if room < 1:
            t += c.plain_ms
            p += 1
            continue
        k = 0  # drafts kept
        while k < room and p + k < n and conf[p + k] >= th:
            k += 1
        rows = k + (k < room)  # the adapter row whose draft was dropped ran too
        t += c.adapter_round_ms(k, rows)
        acc = 0
        while acc < k and right[p + acc]:
            acc += 1
        p += acc + 1
    return t, passes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default=os.environ.get("ENGINE", "engines/smollm2-135m"))
    ap.add_argument("--spec", type=int, default=1, help="Spec-Bench questions per category (0: none)")
    ap.add_argument("--new", type=int, default=96)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--load", type=Path, help="reuse collected records")
    a = ap.parse_args()
    if a.load:
        recs = json.loads(a.load.read_text())
    else:
        engine = KangarooEngine.open(a.engine)
        prompts = [("demo", DEMO)] + [(f"unseen{i + 1:02d}", p) for i, p in enumerate(
            l for l in (HERE / "unseen_prompts.txt").read_text().splitlines() if l.strip())]
        if a.spec:
            from kangaroo_trt.bench import load_questions, select
            prompts += [(f"spec-{q.category}", q.turns[0]) for q in select(load_questions(None), None, a.spec)]
        recs = []
        for name, p in prompts:
            rec = collect(engine, p, a.new)
            rec["name"] = name
            recs.append(rec)
            print(name, sum(rec["right"]), "/", rec["tokens"], file=sys.stderr, flush=True)
        if a.json:
            a.json.write_text(json.dumps(recs))
    report(recs)


def report(recs: list[dict]) -> None:
    ths = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.01)
    for tname, c in (("measured quiet table", MEASURED), ("modelled.py's old table", OLD)):
        print(f"\n## {tname}: speedup over AR (AR = plain step {c.plain_ms:.2f} ms per token)")
        head = "| prompt | right 1st drafts | lookup right/offered | oracle | oracle-probe | oracle-adapter | " + \
               " | ".join(f"th {t:.1f}" if t <= 1 else "lookup only" for t in ths) + " |"
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        groups = {"demo": [], "unseen": [], "spec": []}
        for r in recs:
            ar = r["tokens"] * c.plain_ms
            cols = [oracle(r, c), oracle(r, c, probe=True), oracle(r, c, lookup=False)] + [threshold(r, c, t)[0] for t in ths]
            offered = sum(1 for k, _ in r["lookup"] if k)
            good = sum(1 for k, ok in r["lookup"] if k and ok)
            print(f"| {r['name']} | {sum(r['right'])}/{r['tokens']} | {good}/{offered} | " +
                  " | ".join(f"{ar / x:.2f}x" for x in cols) + " |")
            groups[r["name"].split("-")[0].rstrip("0123456789")].append((r["tokens"], ar, cols))
        for g, rows in groups.items():
            if not rows:
                continue
            ar = sum(x[1] for x in rows)
            tot = np.sum([x[2] for x in rows], axis=0)
            worst = np.min([[x[1] / y for y in x[2]] for x in rows], axis=0)
            print(f"| **{g} overall** (worst) | | | " + " | ".join(f"{ar / t:.2f}x ({w:.2f})" for t, w in zip(tot, worst)) + " |")
    # Calibration: acceptance of first drafts by confidence bin, true prefix.
    conf = np.array([x for r in recs for x in r["conf"]])
    right = np.array([x for r in recs for x in r["right"]])
    print("\n## first-draft acceptance by confidence (true prefix, all prompts)")
    for lo in np.arange(0, 1, 0.1):
        m = (conf >= lo) & (conf < lo + 0.1)
        if m.any():
            print(f"  [{lo:.1f}, {lo + 0.1:.1f}): {right[m].mean():.2f} of {m.sum()}")
    look = [(n, ok) for r in recs for n, (k, ok) in zip(r["ngram"], r["lookup"]) if k]
    print("lookup first copy right, by n-gram:", {n: f"{np.mean([ok > 0 for g, ok in look if g == n]):.2f} of "
                                                   f"{sum(1 for g, _ in look if g == n)}" for n in sorted({g for g, _ in look})})


if __name__ == "__main__":
    main()
