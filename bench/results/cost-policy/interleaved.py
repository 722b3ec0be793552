"""Interleaved timing of AR, Kangaroo with the cost policy and Kangaroo with the tau policy in one process.

    PYTHONPATH=. .venv/bin/python bench/results/cost-policy/interleaved.py engines/smollm2-135m OUT.json [RUNS_DEMO]

`make demo`'s prompt RUNS_DEMO times (default 5), then each prompt of unseen_prompts.txt once; per run the three
methods decode the same prompt (96 new tokens, greedy) one after the other, the order rotating.
"""

import json
import statistics
import sys
from pathlib import Path

from kangaroo_trt.runtimes import share_thread_pool

share_thread_pool(None)
from kangaroo_trt.runner.api import KangarooEngine  # noqa: E402

DEMO = "Explain in three sentences why the sky is blue."
engine = KangarooEngine.open(sys.argv[1])
out, runs = Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 5
methods = {"ar": ("ar", engine.decode_config(max_new_tokens=96)),
           "cost": ("kangaroo", engine.decode_config(max_new_tokens=96)),
           "tau": ("kangaroo", engine.decode_config(max_new_tokens=96, policy="tau"))}
print("\n".join(engine.cost_table().lines()), flush=True)
unseen = [line for line in (Path(__file__).parent / "unseen_prompts.txt").read_text().splitlines() if line.strip()]
jobs = [("demo", DEMO)] * runs + [(f"unseen{i + 1:02d}", p) for i, p in enumerate(unseen)]
for mode, config in methods.values():  # warm-up
    engine.generate(DEMO, chat=True, mode=mode, config=config.__class__(**{**config.__dict__, "max_new_tokens": 8}))
rows = []
for i, (name, prompt) in enumerate(jobs):
    order = list(methods)[i % 3:] + list(methods)[:i % 3]
    row = {"name": name}
    for m in order:
        mode, config = methods[m]
        r = engine.generate(prompt, chat=True, mode=mode, config=config)
        row[m] = {"tok_s": r.stats.tokens_per_s, "tokens": len(r.output_ids), "s": r.stats.total_s,
                  "per_pass": r.stats.acceptance.mean_accepted, "ids": r.output_ids}
    row["identical"] = row["cost"]["ids"] == row["ar"]["ids"] and row["tau"]["ids"] == row["ar"]["ids"]
    for m in methods:
        del row[m]["ids"]
    rows.append(row)
    print(name, " ".join(f"{m} {row[m]['tok_s']:.1f}" for m in methods),
          f"cost x{row['cost']['tok_s'] / row['ar']['tok_s']:.2f} tau x{row['tau']['tok_s'] / row['ar']['tok_s']:.2f}",
          "identical" if row["identical"] else "DIFFERENT", flush=True)


def summary(selected):
    ratio = {m: [r[m]["tok_s"] / r["ar"]["tok_s"] for r in selected] for m in ("cost", "tau")}
    overall = {m: sum(r[m]["tokens"] for r in selected) / sum(r[m]["s"] for r in selected) for m in methods}
    return {"median": {m: statistics.median(v) for m, v in ratio.items()},
            "min": {m: min(v) for m, v in ratio.items()},
            "overall": {m: overall[m] / overall["ar"] for m in ("cost", "tau")},
            "per_pass": {m: sum(r[m]["tokens"] for r in selected) / sum(r[m]["tokens"] / r[m]["per_pass"] for r in selected)
                         for m in ("cost", "tau")},
            "identical": sum(r["identical"] for r in selected), "runs": len(selected)}


result = {"costs": engine.cost_table().to_dict(), "rows": rows,
          "demo": summary([r for r in rows if r["name"] == "demo"]),
          "unseen": summary([r for r in rows if r["name"] != "demo"])}
out.write_text(json.dumps(result, indent=1))
print(json.dumps({k: result[k] for k in ("demo", "unseen")}, indent=1))
