"""Modelled speed, independent of machine load: the real engine decodes (real drafts, real acceptance, the
policy deciding with the QUIET table below), every graph call after the prefill is counted by its row count and
priced with QUIET. TABLE=measured (the default): the table measured on a quiet 2-core machine
(limit12-quiet/report.md: deep pass 28.68 ms, +1.53 ms per further row; shallow 1.82 ms; adapter row 1.17 ms);
TABLE=old: the shape the first rows of README.md used (deep pass 25 ms, 27 ms for 2 rows, +2 ms per further row;
shallow 1.5 ms; adapter row 1.2 ms). Prints per prompt the modelled speedup over AR.

    PYTHONPATH=. .venv/bin/python bench/results/cost-policy/modelled.py bench/results/cost-policy/unseen_prompts.txt 8
    SPEC=1 NEW=64 PYTHONPATH=. .venv/bin/python bench/results/cost-policy/modelled.py   # first Spec-Bench question per category
"""
import os, sys, json, collections, time
from dataclasses import replace
from kangaroo_trt.runtimes import share_thread_pool
share_thread_pool(None)
from kangaroo_trt.runner.api import KangarooEngine
from kangaroo_trt.runner.costs import CostTable
from kangaroo_trt.data import spec_bench  # noqa
e = KangarooEngine.open(os.environ.get("ENGINE", "engines/smollm2-135m"))
R = 8
VERBOSE = os.environ.get("V")
OLD = CostTable(tuple([25.0] + [27.0 + 2.0 * (r - 1) for r in range(1, R)]), tuple(1.5 + 0.1 * r for r in range(R)), 1.2)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from headroom import MEASURED  # noqa: E402
QUIET = OLD if os.environ.get("TABLE") == "old" else MEASURED
d = e.decoder
calls = collections.Counter()
for name in ("_shallow", "_adapter", "_deep"):
    orig = getattr(d, name)
    def spy(*a, _o=orig, _n=name, **k):
        rows = len(a[0]) if _n == "_shallow" else a[0].shape[1]
        calls[(_n, rows)] += 1
        return _o(*a, **k)
    setattr(d, name, spy)
_prefill = d.prefill
def prefill_uncounted(*a, **k):
    state = _prefill(*a, **k)
    calls.clear()  # the same prompt in every mode: its prefill is left out of the modelled time
    return state
d.prefill = prefill_uncounted
def modelled(table):
    t = 0.0
    for (n, rows), c in calls.items():
        if n == "_deep": t += c * table.deep_ms(rows)
        elif n == "_shallow": t += c * table.shallow_ms(rows)
        else: t += c * table.adapter * (1 + 0.1 * (rows - 1))
    return t
d.costs = QUIET
prompts = ["Explain in three sentences why the sky is blue."] + ([l for l in open(sys.argv[1]).read().split("\n") if l.strip()][:int(sys.argv[2])] if len(sys.argv) > 1 else [])
if os.environ.get("SPEC"):
    from kangaroo_trt.bench import load_questions, select
    prompts = [q.turns[0] for q in select(load_questions(None), None, int(os.environ["SPEC"]))]
GAMMA = int(os.environ.get("GAMMA", "5"))
NEW = int(os.environ.get("NEW", "96"))
from kangaroo_trt.runner.policy import Calibration
if os.environ.get("CAL"): d.calibration = Calibration.from_dict(json.load(open(os.environ["CAL"])))
tot = collections.defaultdict(lambda: [0, 0.0])
for p in prompts:
    ids = e.encode([{"role": "user", "content": p}], chat=True)
    row = []
    out = {}
    for m, (mode, c) in {"ar": ("ar", e.decode_config(max_new_tokens=NEW)), "tau": ("kangaroo", e.decode_config(max_new_tokens=NEW, policy="tau")),
                         "cost": ("kangaroo", e.decode_config(max_new_tokens=NEW, gamma=GAMMA))}.items():
        d.costs = replace(QUIET, checked=time.time())  # fixed: the engine neither checks nor re-measures it
        calls.clear()
        g = e.generate(prompt_ids=ids, mode=mode, config=c)
        out[m] = (g.output_ids, modelled(QUIET), g.stats.acceptance.mean_accepted)
        if VERBOSE and mode == "kangaroo":
            a = g.stats.acceptance
            print(m, list(zip(a.drafted, a.accepted)), dict(calls))
    base = out["ar"][1]
    print(f"{p[:40]!r:44}", " ".join(f"{m} x{base / v[1] * 1:.2f} tpp {v[2]:.2f} {'=' if v[0] == out['ar'][0] else '!'}" for m, v in out.items()))
    for m, v in out.items():
        tot[m][0] += len(v[0]); tot[m][1] += v[1]
print("overall", " ".join(f"{m} x{(tot[m][0]/tot[m][1])/(tot['ar'][0]/tot['ar'][1]):.2f}" for m in tot))
