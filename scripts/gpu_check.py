"""Short benchmark of the CUDA backends present: Kangaroo vs AR on the same backend, fixed prompts, one table.

    python scripts/gpu_check.py [--model smollm2-135m] [--precisions fp32,fp16] [--max-new-tokens 64] [--out DIR]

Builds one engine directory (with the model's shipped adapter, else a random one: then expect no speedup),
then, for every backend that is available here
(tensorrt, onnxruntime-cuda, torch-cuda, and onnxruntime-cpu as the baseline; the CUDA-graph backends with
graphs on and off) and every precision it can run, generates each prompt with AR and with Kangaroo and
prints tokens/s, the speedup, tokens per deep pass, and whether Kangaroo's tokens equal AR's. Exits 1 if
any pair differs. Its results update the README's backend status table. On a machine without the bundled model package,
scripts/gpu_carry.sh brings its weights along.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (backend, CUDA graphs "1"/"0", or None where the backend has no such switch)
VARIANTS = (("tensorrt", "1"), ("tensorrt", "0"), ("onnxruntime-cuda", None), ("torch-cuda", "1"), ("torch-cuda", "0"),
            ("onnxruntime-cpu", None))
PROMPTS = (
    "Write a short note to a neighbour about a lost cat.",
    "Explain in two sentences how a bicycle gear works.",
    "List three uses of a paperclip.",
)


def resolve(model: str, work: Path) -> str:
    """The model if it resolves here (bundled package installed, or a local directory); else a tiny random one."""
    from kangaroo_trt.bundled import resolve_model

    try:
        resolve_model(model)
        return model
    except Exception as err:  # no bundled package / no network: fall back so the check still runs
        print(f"note: {model} is not available here ({type(err).__name__}: {err}); using a tiny random Llama")
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from conftest import make_tiny_model

        return str(make_tiny_model(work / "tiny-llama", "llama-gqa-tied"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--precisions", default="fp32,fp16")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from kangaroo_trt.build import build_engine_dir
    from kangaroo_trt.runner.api import KangarooEngine
    from kangaroo_trt.runner.backends import BACKENDS

    work = Path(args.out or tempfile.mkdtemp(prefix="kangaroo-gpu-check."))
    model = resolve(args.model, work)
    engine_dir = work / "engine"
    precisions = tuple(p for p in args.precisions.split(",") if p)
    t = time.perf_counter()
    from kangaroo_trt.bundled import default_adapter
    from kangaroo_trt.build import choose_adapter, export_config

    adapter = choose_adapter(None, default_adapter(model) is None, model)  # the shipped one where there is one
    export = export_config(adapter, max_seq_len=512, precisions=precisions)  # as kangaroo-export build chooses
    build_engine_dir(model, engine_dir, export, adapter=adapter, force=True, log=lambda line: print("  " + line))
    print(f"built {engine_dir} in {time.perf_counter() - t:.0f} s")

    rows, failures = [], 0
    for name, graphs in VARIANTS:
        label = name if graphs is None else f"{name} (CUDA graphs {'on' if graphs == '1' else 'off'})"
        if not BACKENDS[name].available():
            rows.append((label, "-", "not available", "", "", "", ""))
            continue
        if graphs is not None:
            os.environ["KANGAROO_TRT_CUDA_GRAPHS"] = graphs
        for precision in precisions:
            try:
                engine = KangarooEngine.open(engine_dir, backend=name, precision=precision)
            except Exception as err:  # e.g. no TensorRT plans: report and go on
                rows.append((label, precision, f"cannot open: {str(err)[:60]}", "", "", "", ""))
                continue
            engine.generate(PROMPTS[0], chat=engine.manifest.has_chat_template,
                            config=engine.decode_config(max_new_tokens=8))  # warm-up
            config = engine.decode_config(max_new_tokens=args.max_new_tokens)
            ar_s = k_s = ar_n = k_n = passes = 0.0
            same = True
            for prompt in PROMPTS:
                chat = engine.manifest.has_chat_template
                ar = engine.generate(prompt, chat=chat, mode="ar", config=config)
                k = engine.generate(prompt, chat=chat, mode="kangaroo", config=config)
                same &= ar.output_ids == k.output_ids
                ar_s, ar_n = ar_s + ar.stats.total_s, ar_n + ar.stats.new_tokens
                k_s, k_n, passes = k_s + k.stats.total_s, k_n + k.stats.new_tokens, passes + k.stats.acceptance.rounds
            engine.close()  # free this backend's device memory before the next one opens
            failures += not same
            ar_tps, k_tps = ar_n / ar_s, k_n / k_s
            rows.append((label, precision, "ok" if same else "MISMATCH", f"{ar_tps:.1f}", f"{k_tps:.1f}",
                         f"{k_tps / ar_tps:.2f}x", f"{k_n / max(passes, 1):.2f}"))

    header = ("backend", "precision", "kangaroo==ar", "AR tok/s", "Kangaroo tok/s", "speedup", "tokens/deep pass")
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
