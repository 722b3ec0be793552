"""Operators (and on CUDA, kernels) per decoding step on the PyTorch backends, plain modules against compiled steps.

    python scripts/ops_per_step.py --engine-dir engines/smollm2-135m [--backend torch-cpu|torch-cuda]
        [--precision fp32] [--compile] [--time 30] [--threads N]

Counts, with the torch profiler (``kangaroo_trt/runner/opcount.py``), what one AR step (shallow + deep on one token)
and one verify step (shallow + deep on ``max_verify`` tokens) issue in exact mode, on the plain modules and, with
``--compile``, on the compiled steps (``kangaroo_trt/runner/compiled.py``); prints a Markdown table. ``--time N``
also times the AR step N times per variant, the variants interleaved in one process, and prints the medians and
the machine's load average (a shared machine is noisy). Bad input: one ``error:`` line, exit status 2.

On torch-cuda the kernel columns come from ``ProfilerActivity.CUDA``; that path has not run yet (no GPU so far).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "Explain in three sentences why the sky is blue. The sky looks blue because"


def _open(directory: Path, backend: str, precision: str, threads: int | None, compile: bool):
    from kangaroo_trt.contract.manifest import Manifest
    from kangaroo_trt.runner.api import KangarooEngine
    from kangaroo_trt.runner.backend import EngineRef
    from kangaroo_trt.runner.backends import BACKENDS

    ref = EngineRef(directory, Manifest.read(directory), precision)
    return KangarooEngine.from_backend(ref, BACKENDS[backend](ref, threads, compile=compile))


def _time_ar(engines: dict, prompt_ids: list[int], repeats: int) -> dict[str, float]:
    """Median ms of one AR step per engine, the engines interleaved (same positions every time)."""
    p = len(prompt_ids) - 1
    for engine in engines.values():
        engine.decoder.prefill(prompt_ids, with_adapter=False, gamma=1)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, engine in engines.items():
            t = perf_counter()
            engine.decoder._deep(engine.decoder._shallow(prompt_ids[-1:], p), p)
            times[name].append((perf_counter() - t) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-dir", type=Path, required=True)
    parser.add_argument("--backend", default="torch-cpu", choices=("torch-cpu", "torch-cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--compile", action="store_true", help="also count (and time) the compiled steps")
    parser.add_argument("--time", type=int, default=0, metavar="N", help="time the AR step N times per variant")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.time < 0:
        parser.error("--time must be 0 or more")

    from kangaroo_trt.errors import KangarooError
    from kangaroo_trt.markdown import markdown_table
    from kangaroo_trt.runner.opcount import profile_kernels, step_ops

    profile_kernels()
    try:
        variants = {"eager": _open(args.engine_dir, args.backend, args.precision, args.threads, False)}
        if args.compile:
            t = perf_counter()
            variants["compiled"] = _open(args.engine_dir, args.backend, args.precision, args.threads, True)
            print(f"compiled the steps in {perf_counter() - t:.1f} s (at open)", file=sys.stderr)
    except KangarooError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    first = next(iter(variants.values()))
    k = first.manifest.max_verify
    prompt_ids = first.encode(PROMPT, chat=False)[:first.manifest.max_seq_len - k - 1]  # room for a verify step
    cuda = args.backend == "torch-cuda"
    rows = []
    for kind, label in (("ar", "AR step (1 token)"), ("verify", f"verify step ({k} tokens)")):
        for name, engine in variants.items():
            ops = step_ops(engine, kind, prompt_ids, k)
            rows.append([label, name, str(ops.ops), str(ops.compute)] +
                        ([str(ops.kernels), str(ops.copies)] if cuda else []))
    header = ["step (shallow + deep)", "modules", "operators", "compute operators"] + \
        (["CUDA kernels", "copies / sets"] if cuda else [])
    model = first.manifest.model
    print(f"{args.engine_dir} ({model.num_layers} layers, exit layer {first.manifest.exit_layer}), {args.backend} "
          f"{args.precision}, exact mode (steps padded to {first.decoder.rows} rows)\n")
    print("\n".join(markdown_table(header, rows)))
    if args.time:
        load = os.getloadavg()
        medians = _time_ar(variants, prompt_ids, args.time)
        after = os.getloadavg()
        print(f"\nAR step, median of {args.time} (interleaved): " +
              ", ".join(f"{name} {ms:.2f} ms" for name, ms in medians.items()) +
              f"; load average {load[0]:.1f} before, {after[0]:.1f} after ({os.cpu_count()} CPUs)")
    for engine in variants.values():
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
