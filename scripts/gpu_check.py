"""One run that measures every backend present: speed, Kangaroo == AR, the exactness check, kernels per step.

    python scripts/gpu_check.py [--model smollm2-135m] [--backends B,..] [--precisions fp32,fp16,bf16]
        [--prompts 24] [--max-new-tokens 128] [--also-loose] [--json OUT.json] [--engine-dir DIR] [--time-budget S]

Builds one engine directory (``kangaroo-export build`` in a subprocess, with the model's shipped adapter, else a
random one: then expect no speedup; a model that does not resolve here falls back to a tiny random Llama), then,
for every backend asked for (default: the CUDA ones present, tensorrt, onnxruntime-cuda and torch-cuda, the
CUDA-graph backends with graphs on and off, plus onnxruntime-cpu as the baseline) and every precision it can run,
in exact mode (and with ``--also-loose`` also exact=False, so the cost of exactness shows), one row of:

- AR and Kangaroo ms per token (decode only; also with prefill), speedup, tokens per deep pass, over the same chat
  prompts (Spec-Bench first turns, round robin over its tasks, and a few chat prompts of this script's own, under
  the model's chat template; prompts that do not fit the cache are passed over). Rows with CUDA graphs off use the
  first ``--eager-prompts`` of them and CPU rows the first ``--cpu-prompts`` (at 24 x 128 they would take minutes of
  a GPU machine's budget); ``n_prompts`` in each row says how many it decoded.
- Kangaroo == AR on each prompt; at a divergence, the prompt, the position and the target's top-1 minus top-2
  logit there (AR is timed without recording margins; a prompt that diverges is decoded again by AR with
  ``record_margins=True``, which must give the same tokens, for its margins).
- ``kangaroo-check``'s report (``runner/exactness.check_engine``, a modest setting).
- Kernels per step: CUDA kernels of one AR step, one verify step (a deep pass over gamma + 1 tokens) and one
  Kangaroo round, counted with torch.profiler on the CUDA backends; top-level ATen ops on torch-cpu; None where
  nothing measures them (ONNX Runtime CPU).

Then transformers ``generate`` on the same device (greedy, the same prompts, up to ``--peer-prompts``) as the peer
baseline. ``--json OUT`` writes the results (after every row, so a run cut short keeps what it measured) and a
Markdown report.md beside it. Exit status 1 if any exact-mode row has Kangaroo != AR or a failed check; 2 on bad
options. scripts/gpu_check.sh runs it on a GPU machine; scripts/gpu_carry.sh brings the real model there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CUDA_BACKENDS = ("tensorrt", "onnxruntime-cuda", "torch-cuda")
CPU_BACKENDS = ("onnxruntime-cpu", "torch-cpu")
GRAPH_BACKENDS = ("tensorrt", "torch-cuda")  # the backends with a CUDA-graph switch (KANGAROO_TRT_CUDA_GRAPHS)
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

# Chat prompts of this script's own (not from the adapter's training data, ShareGPT), after the Spec-Bench ones.
EXTRA_PROMPTS = (
    "Write a short note to a neighbour about a lost cat.",
    "Explain in two sentences how a bicycle gear works.",
    "List three uses of a paperclip.",
    "What is the difference between weather and climate? Answer briefly.",
    "Write a Python function that returns the largest of three numbers, with a docstring.",
    "Give me a packing list for a two-day hiking trip.",
    "Summarize the plot of Little Red Riding Hood in three sentences.",
    "How do I convert 72 degrees Fahrenheit to Celsius? Show the steps.",
)


@dataclass(frozen=True)
class Variant:
    backend: str
    graphs: bool | None  # CUDA graphs on/off; None where the backend has no such switch

    @property
    def label(self) -> str:
        return self.backend if self.graphs is None else f"{self.backend} (graphs {'on' if self.graphs else 'off'})"

    @property
    def cuda(self) -> bool:
        return self.backend in CUDA_BACKENDS


@dataclass(frozen=True)
class Prompt:
    source: str  # "spec-bench <task> <question_id>" or "extra <i>"
    text: str
    ids: tuple[int, ...]


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    from kangaroo_trt.config import PRECISIONS
    from kangaroo_trt.runner.backends import BACKENDS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="bundled name or local HF directory [smollm2-135m]")
    ap.add_argument("--engine-dir", type=Path, default=None, help="use this built engine directory instead of building one")
    ap.add_argument("--out", type=Path, default=None, help="work directory for the engine [a temporary one]")
    ap.add_argument("--backends", default=None, help="comma-separated [the CUDA ones present + onnxruntime-cpu]")
    ap.add_argument("--precisions", default="fp32,fp16,bf16", help="comma-separated [fp32,fp16,bf16]")
    ap.add_argument("--cuda-graphs", default="on,off", help="CUDA-graph settings for tensorrt / torch-cuda [on,off]")
    ap.add_argument("--prompts", type=int, default=24, help="chat prompts per row [24]")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per generation [128]")
    ap.add_argument("--cpu-prompts", type=int, default=4, help="prompts per CPU row, at most --prompts [4]")
    ap.add_argument("--eager-prompts", type=int, default=8, help="prompts per CUDA-graphs-off row, at most --prompts [8]")
    ap.add_argument("--peer-prompts", type=int, default=8, help="prompts for transformers generate (0: none) [8]")
    ap.add_argument("--check-prompts", type=int, default=2, help="prompts of the exactness check per row [2]")
    ap.add_argument("--check-new-tokens", type=int, default=24, help="tokens per exactness-check generation [24]")
    ap.add_argument("--max-seq-len", type=int, default=1024, help="engine cache (capped by the model's) [1024]")
    ap.add_argument("--also-loose", action="store_true", help="also run every row with exact=False")
    ap.add_argument("--no-kernels", action="store_true", help="do not count kernels per step (no torch.profiler)")
    ap.add_argument("--time-budget", type=float, default=None, help="seconds: start no row or peer run after it")
    ap.add_argument("--json", type=Path, default=None, help="write the results here, and report.md beside it")
    args = ap.parse_args(argv)
    args.backends = [b for b in (args.backends or "").split(",") if b] or None
    args.precisions = [p for p in args.precisions.split(",") if p]
    graphs = {"on": True, "off": False}
    for name in args.backends or ():
        if name not in BACKENDS:
            fail(f"unknown backend {name!r} in --backends: choose from {', '.join(BACKENDS)}")
    for p in args.precisions:
        if p not in PRECISIONS:
            fail(f"unknown precision {p!r} in --precisions: choose from {', '.join(PRECISIONS)}")
    if not args.precisions:
        fail("--precisions is empty: give at least one of fp32, fp16, bf16, int8")
    try:
        args.cuda_graphs = [graphs[g] for g in args.cuda_graphs.split(",") if g]
    except KeyError:
        fail(f"--cuda-graphs takes on, off or on,off, got {args.cuda_graphs!r}")
    for name in ("prompts", "max_new_tokens", "cpu_prompts", "eager_prompts", "check_prompts", "check_new_tokens"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.peer_prompts < 0:
        fail(f"--peer-prompts must be 0 or more, got {args.peer_prompts}")
    if args.engine_dir is not None and not (args.engine_dir / "manifest.json").is_file():
        fail(f"--engine-dir {args.engine_dir} holds no manifest.json: build it with kangaroo-export build, or leave it out")
    return args


# --- set-up -----------------------------------------------------------------------------------------------------

def resolve(model: str, work: Path) -> tuple[str, bool]:
    """The model if it resolves here (bundled package installed, or a local directory); else a tiny random one.
    Returns (model, fell back)."""
    from kangaroo_trt.bundled import resolve_model

    try:
        resolve_model(model)
        return model, False
    except Exception as err:  # no bundled package / no network: fall back so the check still runs
        print(f"note: {model} is not available here ({type(err).__name__}: {err}); using a tiny random Llama")
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import make_tiny_model

        return str(make_tiny_model(work / "tiny-llama", "llama-gqa-tied", chat=True)), True


def build(model: str, engine_dir: Path, precisions: list[str], max_seq_len: int) -> float:
    """``kangaroo-export build`` in a subprocess (this process then opens ONNX Runtime's shared thread pool before
    any session, as kangaroo-run does); the shipped adapter where there is one. Returns its seconds."""
    from kangaroo_trt.bundled import default_adapter, resolve_model
    from kangaroo_trt.config import ModelSpec
    from kangaroo_trt.model.weights import load_hf_config

    spec = ModelSpec.from_hf_config(load_hf_config(resolve_model(model)))
    cmd = [sys.executable, "-m", "kangaroo_trt.cli.export_cli", "build", "--model", model, "--out", str(engine_dir),
           "--precision", ",".join(precisions), "--max-seq-len", str(min(max_seq_len, spec.max_position_embeddings)),
           "--force"] + (["--random-adapter"] if default_adapter(model) is None else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env)
    if done.returncode:
        fail(f"the engine build failed (exit status {done.returncode}); its output is above")
    return time.perf_counter() - start


def variants(names: list[str] | None, graph_settings: list[bool]) -> list[Variant]:
    """The rows' backends in report order: CUDA ones first, then the CPU baseline."""
    from kangaroo_trt.runner.backends import BACKENDS

    if names is None:
        names = [b for b in CUDA_BACKENDS if BACKENDS[b].available()] + ["onnxruntime-cpu"]
    order = [b for b in (*CUDA_BACKENDS, *CPU_BACKENDS) if b in names]
    return [Variant(b, g) for b in order for g in (graph_settings if b in GRAPH_BACKENDS else (None,))]


def select_prompts(encode, n: int, room: int) -> list[Prompt]:
    """``n`` chat prompts that fit ``room`` tokens: Spec-Bench first turns round robin over its tasks, and one in
    four (at most all of EXTRA_PROMPTS) of this script's own, after them."""
    from kangaroo_trt.bench.questions import load_questions, tasks_in

    questions = load_questions()
    by_task = {t: [q for q in questions if q.task == t] for t in tasks_in(questions)}
    spec = [(f"spec-bench {t} {qs[i].question_id}", qs[i].turns[0])
            for i in range(max(map(len, by_task.values()))) for t, qs in by_task.items() if i < len(qs)]
    extra = [(f"extra {i}", text) for i, text in enumerate(EXTRA_PROMPTS)]
    n_extra = min(len(extra), n // 4)

    def take(candidates, k, chosen):
        for source, text in candidates:
            if k <= 0:
                break
            if any(p.source == source for p in chosen):
                continue
            ids = encode(text)
            if len(ids) <= room:
                chosen.append(Prompt(source, text, tuple(ids)))
                k -= 1

    chosen: list[Prompt] = []
    take(spec, n - n_extra, chosen)
    take(extra, n_extra, chosen)
    take(spec + extra, n - len(chosen), chosen)  # where extras (or Spec-Bench ones) did not fit
    if not chosen:
        fail("no prompt fits the engine's cache with --max-new-tokens: lower --max-new-tokens or raise --max-seq-len")
    return chosen


# --- one row ----------------------------------------------------------------------------------------------------

def ms(seconds: float, tokens: int) -> float | None:
    return 1000.0 * seconds / tokens if tokens else None


def measure(engine, prompts: list[Prompt], max_new_tokens: int) -> tuple[dict, dict[str, list[list[int]]]]:
    """Timed AR and Kangaroo generations (warm-up first; the starting mode alternates) and their comparison."""
    from kangaroo_trt.runner.equality import compare_outputs

    config = {m: engine.decode_config(mode=m, max_new_tokens=max_new_tokens) for m in ("ar", "kangaroo")}
    for mode in ("ar", "kangaroo"):
        engine.generate(prompt_ids=list(prompts[0].ids), config=engine.decode_config(mode=mode, max_new_tokens=min(max_new_tokens, 64)))
    totals = {m: {"s": 0.0, "prefill_s": 0.0, "tokens": 0, "passes": 0, "drafted": 0, "drafting": 0}
              for m in ("ar", "kangaroo")}
    outputs: dict[str, list[list[int]]] = {"ar": [], "kangaroo": []}
    divergences = []
    for i, prompt in enumerate(prompts):
        results = {}
        for mode in (("ar", "kangaroo") if i % 2 == 0 else ("kangaroo", "ar")):
            results[mode] = r = engine.generate(prompt_ids=list(prompt.ids), config=config[mode])
            t = totals[mode]
            t["s"] += r.stats.total_s
            t["prefill_s"] += r.stats.prefill_s
            t["tokens"] += r.stats.new_tokens
            t["passes"] += r.stats.acceptance.rounds
            t["drafted"] += sum(r.stats.acceptance.drafted)
            t["drafting"] += sum(d > 0 for d in r.stats.acceptance.drafted)
        for mode in outputs:
            outputs[mode].append(results[mode].output_ids)
        if results["ar"].output_ids != results["kangaroo"].output_ids:
            again = engine.generate(prompt_ids=list(prompt.ids), config=config["ar"], record_margins=True)
            eq = compare_outputs(results["kangaroo"], again)
            divergences.append({"prompt": i, "source": prompt.source, "text": prompt.text[:120], "position": eq.position,
                                "margin": eq.margin, "kangaroo_token": eq.kangaroo_token, "ar_token": eq.ar_token,
                                "ar_repeatable": again.output_ids == results["ar"].output_ids})
    ar, k = totals["ar"], totals["kangaroo"]
    ar_ms, k_ms = ms(ar["s"] - ar["prefill_s"], ar["tokens"]), ms(k["s"] - k["prefill_s"], k["tokens"])
    row = {"ar_ms_per_token": ar_ms, "kangaroo_ms_per_token": k_ms,
           "kangaroo_speedup": ar_ms / k_ms if ar_ms and k_ms else None,
           "ar_ms_per_token_with_prefill": ms(ar["s"], ar["tokens"]),
           "kangaroo_ms_per_token_with_prefill": ms(k["s"], k["tokens"]),
           "tokens_per_deep_pass": k["tokens"] / k["passes"] if k["passes"] else None,
           # how deep the cost policy drafts here: drafts verified per deep pass, and per pass that verified any
           "drafts_per_deep_pass": k["drafted"] / k["passes"] if k["passes"] else None,
           "drafts_per_drafting_pass": k["drafted"] / k["drafting"] if k["drafting"] else None,
           "cost_table": costs.to_dict() if (costs := engine.decoder.costs) is not None else None,
           "ar_tokens": ar["tokens"], "kangaroo_tokens": k["tokens"],
           "equal": not divergences, "n_prompts": len(prompts), "identical": len(prompts) - len(divergences),
           "divergences": divergences}
    return row, outputs


def count_events(prof, cuda: bool) -> int | None:
    """CUDA kernels (memory copies and sets left out), or top-level ATen ops on the CPU, in a profile."""
    from torch.autograd import DeviceType

    if cuda:
        n = sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA
                and not e.name.startswith(("Memcpy", "Memset", "[memory]")))
    else:
        n = sum(1 for e in prof.events() if e.device_type == DeviceType.CPU and e.name.startswith("aten::")
                and e.cpu_parent is None)
    return n or None  # nothing recorded: not measured, not zero


def kernels_per_step(engine, variant: Variant, prompt: Prompt) -> dict | None:
    """Kernels (CUDA) or top-level ops (torch-cpu) of one AR step, one verify step and one Kangaroo round; None
    where torch.profiler cannot see the work (ONNX Runtime CPU)."""
    if not (variant.cuda or variant.backend == "torch-cpu"):
        return None
    import torch
    from torch.profiler import ProfilerActivity, profile

    decoder, gamma = engine.decoder, min(engine.manifest.decode.gamma, engine.manifest.max_verify - 1)
    ids = list(prompt.ids)
    state = decoder.prefill(ids, with_adapter=True, gamma=gamma)
    drafts = (ids * (gamma + 1))[:gamma]
    calls = {"ar_step": lambda: decoder.ar_step(state),
             "verify_step": lambda: decoder.lookup_round(state, drafts),  # shallow + deep over gamma + 1 tokens
             "kangaroo_round": lambda: decoder.adapter_round(state, gamma)}  # gamma drafts, read once (as resident)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if variant.cuda else [])
    out: dict = {"unit": "CUDA kernels" if variant.cuda else "top-level ATen ops"}
    for name, call in calls.items():
        for _ in range(2):  # the first call of a shape captures its CUDA graph
            call()
        if variant.cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            call()
            if variant.cuda:
                torch.cuda.synchronize()
        out[name] = count_events(prof, variant.cuda)
    return out


def host_reads(engine, prompt: Prompt, max_new_tokens: int) -> dict | None:
    """Device-to-host reads per round of one AR and one Kangaroo generation, and the largest read (elements); None
    where they cannot be counted (the CuPy and ONNX Runtime backends: ``runner/readbacks.py``)."""
    if not engine.backend.name.startswith("torch"):
        return None
    from kangaroo_trt.runner.readbacks import reads_per_round

    runs = {mode: reads_per_round(engine.decoder, list(prompt.ids), engine.decode_config(max_new_tokens=max_new_tokens,
                                                                                         mode=mode))
            for mode in ("ar", "kangaroo")}
    return {**{mode: r["reads"] / r["rounds"] for mode, r in runs.items()},
            "largest_read": max(r["largest_read"] for r in runs.values())}


def run_row(engine_dir: Path, variant: Variant, precision: str, exact: bool, prompts: list[Prompt], args):
    """Open one backend / precision / mode, measure it, close it. Returns (row, check report, outputs)."""
    from kangaroo_trt.runner.api import KangarooEngine
    from kangaroo_trt.runner.exactness import CHECK_PROMPTS, check_engine

    if variant.graphs is not None:
        os.environ["KANGAROO_TRT_CUDA_GRAPHS"] = "1" if variant.graphs else "0"
    engine = KangarooEngine.open(engine_dir, backend=variant.backend, precision=precision, exact=exact)
    try:
        row = {"backend": variant.backend, "cuda_graphs": variant.graphs, "precision": precision, "exact": exact,
               "device": engine.backend.device, "padded_rows": engine.decoder.rows}
        measured, outputs = measure(engine, prompts, args.max_new_tokens)
        row.update(measured)
        row["host_reads_per_round"] = host_reads(engine, prompts[0], args.max_new_tokens)
        try:
            row["kernels_per_step"] = None if args.no_kernels else kernels_per_step(engine, variant, prompts[0])
        except Exception as err:  # the profiler is a measurement aid: its failure is reported, not fatal
            row["kernels_per_step"] = None
            row["kernels_error"] = f"{type(err).__name__}: {err}"[:200]
        check_ids = [engine.encode(t, chat=False) for t in (CHECK_PROMPTS * args.check_prompts)[:args.check_prompts]]
        try:
            report = check_engine(engine, check_ids, new_tokens=args.check_new_tokens, fills_per_prompt=2)
            row["check"] = report.to_dict()
        except Exception as err:  # a check that cannot run verifies nothing: a failed check, with its reason
            traceback.print_exc()
            report, row["check"] = None, {"ok": False, "error": f"{type(err).__name__}: {err}"[:300]}
        return row, report, outputs
    finally:
        engine.close()


# --- the peer baseline ------------------------------------------------------------------------------------------

def hf_generate(model, ids: tuple[int, ...], n: int, eos: list[int]) -> tuple[list[int], float]:
    """Greedy ``generate`` of up to ``n`` tokens after ``ids`` (as bench/hf_baseline.py runs it), and its seconds."""
    import torch

    x = torch.tensor([list(ids)], dtype=torch.long, device=model.device)
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, num_beams=1, max_new_tokens=n,
                             eos_token_id=eos, pad_token_id=eos[0])
    if cuda:
        torch.cuda.synchronize()
    return out[0, len(ids):].tolist(), time.perf_counter() - start


def run_peer(engine_dir: Path, manifest, device: str, precisions: list[str], prompts: list[Prompt],
             max_new_tokens: int, ar_outputs: dict) -> dict:
    """transformers ``generate`` (greedy) of the source model on ``device``, per precision; tokens compared with
    our AR on the same device and precision (for information: another runtime may break a near-tie the other way)."""
    import torch
    from transformers import AutoTokenizer

    from kangaroo_trt.bench.hf_baseline import TransformersBaseline
    from kangaroo_trt.runner.backend import EngineRef

    model_dir = EngineRef(engine_dir, manifest, manifest.precisions[0]).source_model_dir()  # digest checked
    tokenizer = AutoTokenizer.from_pretrained(engine_dir / "tokenizer", local_files_only=True)
    eos = list(manifest.eos_token_ids)
    runs = []
    for precision in precisions:
        model = TransformersBaseline(model_dir, tokenizer, tuple(eos)).model
        model = model.to(device=device, dtype=getattr(torch, TORCH_DTYPES[precision]))
        hf_generate(model, prompts[0].ids, min(max_new_tokens, 16), eos)  # warm-up
        seconds, tokens, same = 0.0, 0, 0
        reference = ar_outputs.get((device, precision))  # (row label, AR outputs per prompt)
        for i, prompt in enumerate(prompts):
            out, s = hf_generate(model, prompt.ids, max_new_tokens, eos)
            seconds, tokens = seconds + s, tokens + len(out)
            same += reference is not None and i < len(reference[1]) and reference[1][i] == out
        runs.append({"precision": precision, "tokens_per_s": tokens / seconds if seconds else None,
                     "ms_per_token_with_prefill": ms(seconds, tokens), "new_tokens": tokens,
                     "same_tokens_as_ar": None if reference is None else same,
                     "compared": None if reference is None else min(len(prompts), len(reference[1])),
                     "compared_with": None if reference is None else reference[0]})
        model = None
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"method": "transformers generate (greedy, eager)", "device": device, "n_prompts": len(prompts),
            "max_new_tokens": max_new_tokens, "runs": runs}


# --- the report -------------------------------------------------------------------------------------------------

def fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def costs_cell(table: dict | None) -> str:
    """A cost table in a few numbers: the one-row deep pass, what each further row adds, and a draft step."""
    if not table:
        return "-"
    from kangaroo_trt.runner.costs import CostTable

    t = CostTable.from_dict(table)
    per_row = (t.deep[-1] - t.deep[0]) / (t.rows - 1) if t.rows > 1 else 0.0
    return f"{t.deep[0]:.2f}, +{per_row:.2f}, {t.draft_ms:.2f}"


def markdown(results: dict, reports: list) -> str:
    from kangaroo_trt.markdown import markdown_table

    s = results["settings"]
    lines = [f"# gpu_check: {results['gpu']}", "",
             f"Model {s['model']}{' (tiny random fallback)' if s['model_fallback'] else ''}, engine {s['engine_dir']}; "
             f"{s['prompts']} chat prompts x {s['max_new_tokens']} new tokens (rows with CUDA graphs off: the first "
             f"{s['eager_prompts']}; CPU rows: the first {s['cpu_prompts']}), "
             f"gamma {s['gamma']}, tau {s['tau']}; ms/token is decode time per token (prefill excluded; with prefill "
             "in brackets). Drafts/pass: drafts the cost policy verified per deep pass (per pass that verified any, in "
             "brackets); its cost table (ms: deep pass 1 row, each further row, draft step) decides how deep. Kernels: one AR "
             "step / one verify step / one Kangaroo round. Host reads per round: device-to-host reads of torch tensors per "
             "round, AR / Kangaroo (torch backends only).", ""]
    rows = []
    for r in results["rows"]:
        k = r.get("kernels_per_step") or {}
        rows.append([r["backend"] + ("" if r["cuda_graphs"] is None else f" graphs {'on' if r['cuda_graphs'] else 'off'}"),
                     r["precision"], "exact" if r["exact"] else "loose",
                     f"{fmt(r['ar_ms_per_token'])} ({fmt(r['ar_ms_per_token_with_prefill'])})",
                     f"{fmt(r['kangaroo_ms_per_token'])} ({fmt(r['kangaroo_ms_per_token_with_prefill'])})",
                     fmt(r["kangaroo_speedup"]) + "x", fmt(r["tokens_per_deep_pass"]),
                     f"{fmt(r.get('drafts_per_deep_pass'))} ({fmt(r.get('drafts_per_drafting_pass'))})", costs_cell(r.get("cost_table")),
                     f"{r['identical']}/{r['n_prompts']}", "ok" if r["check"]["ok"] else "FAILED" if "error" not in r["check"] else "could not run",
                     " / ".join(fmt(k.get(n), "d") for n in ("ar_step", "verify_step", "kangaroo_round")) if k else "-",
                     f"{fmt(h['ar'])} / {fmt(h['kangaroo'])}" if (h := r.get("host_reads_per_round")) else "-"])
    lines += markdown_table(["backend", "precision", "mode", "AR ms/tok", "Kangaroo ms/tok", "speedup", "tok/deep pass",
                             "drafts/pass", "costs (deep, +row, draft)",
                             "Kangaroo == AR", "check", "kernels", "host reads/round"], rows)
    divergences = [(r, d) for r in results["rows"] for d in r["divergences"]]
    if divergences:
        lines += ["", "## Divergences", ""]
        lines += [f"- {r['backend']} {r['precision']} {'exact' if r['exact'] else 'loose'}: prompt {d['prompt']} "
                  f"({d['source']}) at output position {d['position']}, AR top-1 minus top-2 logit {fmt(d['margin'], '.3g')}"
                  f"{'' if d['ar_repeatable'] else ' (AR did not repeat its own tokens)'}" for r, d in divergences]
    if results["skipped"]:
        lines += ["", "## Not run", ""] + [f"- {s['backend']} {s['precision'] or ''}: {s['reason']}" for s in results["skipped"]]
    peer = results.get("peer")
    if peer and peer.get("runs"):
        lines += ["", f"## Peer: {peer['method']} on {peer['device']}", ""]
        lines += markdown_table(["precision", "tokens/s", "ms/token (with prefill)", "same tokens as our AR"],
                                [[p["precision"], fmt(p["tokens_per_s"], ".1f"), fmt(p["ms_per_token_with_prefill"]),
                                  "-" if p["same_tokens_as_ar"] is None
                                  else f"{p['same_tokens_as_ar']}/{p['compared']} ({p['compared_with']})"]
                                 for p in peer["runs"]])
    elif peer and peer.get("error"):
        lines += ["", f"## Peer: not measured ({peer['error']})"]
    lines += ["", "## kangaroo-check per row", ""]
    for r, report in zip(results["rows"], reports):
        text = report.table() if report is not None else \
            f"{r['backend']} {r['precision']}: the check could not run ({r['check']['error']})"
        lines += ["```", text, "```", ""]
    lines += [f"Total {results['elapsed_s']:.0f} s (engine build {fmt(s['build_s'], '.0f')} s)."]
    return "\n".join(lines) + "\n"


def write(results: dict, reports: list, path: Path | None) -> None:
    """The JSON and report.md beside it, each replaced whole (a run cut short leaves the last complete one)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, text in ((path, json.dumps(results, indent=1) + "\n"), (path.parent / "report.md", markdown(results, reports))):
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)


# --- main -------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    start = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = parse_args(argv)
    from kangaroo_trt.bench.environment import environment
    from kangaroo_trt.paths import writable_dir

    from kangaroo_trt.chat import encode_chat
    from kangaroo_trt.contract.manifest import Manifest
    from kangaroo_trt.errors import KangarooError
    from kangaroo_trt.runner.backends import BACKENDS
    from kangaroo_trt.runtimes import share_thread_pool, thread_pool

    if args.json is not None:
        writable_dir(args.json.parent, "--json")  # before any work: a long run never fails at its end
    model, fell_back, build_s = args.model, False, None
    if args.engine_dir is None:
        work = writable_dir(args.out, "--out") if args.out else Path(tempfile.mkdtemp(prefix="kangaroo-gpu-check."))
        model, fell_back = resolve(args.model, work)
        engine_dir = work / "engine"
        build_s = build(model, engine_dir, args.precisions, args.max_seq_len)
        print(f"built {engine_dir} in {build_s:.0f} s")
    else:
        engine_dir = args.engine_dir
    manifest = Manifest.read(engine_dir)
    rows_to_run = variants(args.backends, args.cuda_graphs)
    if os.environ.get("KANGAROO_TRT_THREAD_POOL", "shared") == "shared" and any(v.backend == "onnxruntime-cpu" for v in rows_to_run):
        share_thread_pool()  # as kangaroo-run and kangaroo-bench run ONNX Runtime CPU (before any session here)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(engine_dir / "tokenizer", local_files_only=True)
    chat = manifest.has_chat_template
    encode = (lambda text: encode_chat(tokenizer, [{"role": "user", "content": text}])) if chat else \
        (lambda text: tokenizer(text, add_special_tokens=True)["input_ids"])
    prompts = select_prompts(encode, args.prompts, manifest.max_seq_len - args.max_new_tokens - manifest.max_verify - 1)
    cuda_present = any(v.cuda and BACKENDS[v.backend].available() for v in rows_to_run)
    gpu = "cpu"
    if cuda_present:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CUDA device (no name: torch has no CUDA)"
    results = {"gpu": gpu, "rows": [], "skipped": [], "peer": None, "elapsed_s": 0.0, "settings": {
        "model": model, "model_fallback": fell_back, "engine_dir": str(engine_dir), "build_s": build_s,
        "precisions": args.precisions, "backends": [v.label for v in rows_to_run], "prompts": len(prompts),
        "prompt_sources": [p.source for p in prompts], "chat_template": chat, "max_new_tokens": args.max_new_tokens,
        "cpu_prompts": min(args.cpu_prompts, len(prompts)), "eager_prompts": min(args.eager_prompts, len(prompts)),
        "peer_prompts": min(args.peer_prompts, len(prompts)), "kernels": not args.no_kernels,
        "check": {"prompts": args.check_prompts, "new_tokens": args.check_new_tokens, "fills_per_prompt": 2},
        "gamma": manifest.decode.gamma, "tau": manifest.decode.tau, "max_seq_len": manifest.max_seq_len,
        "max_verify": manifest.max_verify, "also_loose": args.also_loose, "time_budget_s": args.time_budget,
        "onnxruntime_thread_pool": thread_pool(), "environment": environment()}}
    reports, ar_outputs, failures = [], {}, []

    def row_prompt_count(variant: Variant) -> int:
        return min(len(prompts), args.prompts if variant.cuda and variant.graphs is not False
                   else args.eager_prompts if variant.cuda else args.cpu_prompts)

    def over_budget() -> bool:
        return args.time_budget is not None and time.perf_counter() - start > args.time_budget

    def skip(variant_label: str, precision: str | None, reason: str) -> None:
        results["skipped"].append({"backend": variant_label, "precision": precision, "reason": reason})
        print(f"-- {variant_label} {precision or ''}: {reason}")

    def peer() -> None:
        device = "cuda" if cuda_present else "cpu"
        precisions = [p for p in args.precisions if p in TORCH_DTYPES and (device == "cuda" or p == "fp32")]
        n = min(args.peer_prompts, len(prompts))
        if not n or not precisions:
            return
        if over_budget():
            results["peer"] = {"error": "time budget spent"}
            return
        print(f"== peer: transformers generate on {device} ({', '.join(precisions)}, {n} prompts)", flush=True)
        try:
            results["peer"] = run_peer(engine_dir, manifest, device, precisions, prompts[:n], args.max_new_tokens, ar_outputs)
        except Exception as err:  # the peer is context, not a check: its failure is reported, not fatal
            results["peer"] = {"error": f"{type(err).__name__}: {err}"[:300]}
        write_now()

    def write_now() -> None:
        results["elapsed_s"] = time.perf_counter() - start
        write(results, reports, args.json)

    peer_done = False
    for variant in rows_to_run:
        if cuda_present and not variant.cuda and not peer_done:  # on a GPU: after the GPU rows, before the CPU ones
            peer()
            peer_done = True
        cls = BACKENDS[variant.backend]
        if not cls.available():
            skip(variant.label, None, "not available on this machine")
            continue
        for precision in args.precisions:
            if precision not in manifest.graphs:
                skip(variant.label, precision, "not in the engine directory")
                continue
            if not cls.can_run(manifest, precision):
                continue  # e.g. bf16 on ONNX Runtime, int8 on PyTorch: not a row at all
            for exact in (True, False) if args.also_loose else (True,):
                if over_budget():
                    skip(variant.label, precision, f"time budget ({args.time_budget:.0f} s) spent")
                    continue
                row_prompts = prompts[:row_prompt_count(variant)]
                print(f"== {variant.label} {precision} {'exact' if exact else 'loose'} ({len(row_prompts)} prompts)", flush=True)
                t = time.perf_counter()
                try:
                    row, report, outputs = run_row(engine_dir, variant, precision, exact, row_prompts, args)
                except KangarooError as err:  # cannot open here (no plans, a failed recorded check, ...)
                    skip(variant.label, precision, f"cannot open: {' '.join(str(err).split())[:200]}")
                    record = manifest.exact_check(variant.backend, precision)
                    if exact and record is not None and not record.get("ok"):
                        failures.append(f"{variant.label} {precision}: the export's exactness check failed")
                    continue
                except Exception as err:  # a crash in one row must not lose the others: shown, counted as a failure
                    traceback.print_exc()
                    skip(variant.label, precision, f"crashed: {type(err).__name__}: {' '.join(str(err).split())[:200]}")
                    failures.append(f"{variant.label} {precision}: crashed ({type(err).__name__})")
                    write_now()
                    continue
                row["seconds"] = time.perf_counter() - t
                results["rows"].append(row)
                reports.append(report)
                key = (row["device"], precision)
                if exact and key not in ar_outputs:
                    ar_outputs[key] = (variant.label, outputs["ar"])
                check = "ok" if row["check"]["ok"] else "FAILED" if report is not None else "could not run"
                if exact and not (row["equal"] and row["check"]["ok"]):
                    failures.append(f"{variant.label} {precision}: Kangaroo == AR {row['identical']}/{row['n_prompts']}, "
                                    f"check {check}")
                print(f"   AR {fmt(row['ar_ms_per_token'])} ms/tok, Kangaroo {fmt(row['kangaroo_ms_per_token'])} ms/tok, "
                      f"{fmt(row['kangaroo_speedup'])}x, {fmt(row['tokens_per_deep_pass'])} tok/pass, "
                      f"equal {row['identical']}/{row['n_prompts']}, check {check}, "
                      f"kernels {row['kernels_per_step']} ({row['seconds']:.0f} s)", flush=True)
                write_now()
    if not peer_done:
        peer()
    write_now()
    print(markdown(results, reports))
    if args.json is not None:
        print(f"wrote {args.json} and {args.json.parent / 'report.md'}")
    for line in failures:
        print(f"FAILED: {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    from kangaroo_trt.errors import KangarooError

    try:
        sys.exit(main())
    except KangarooError as err:  # bad input (a path, an engine directory): one line, exit status 2
        fail(" ".join(str(err).split()))
