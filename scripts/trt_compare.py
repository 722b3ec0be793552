"""TensorRT against ONNX Runtime, graph by graph, with Polygraphy's Comparator. Never run: needs TensorRT and a GPU.

    python scripts/trt_compare.py ENGINE_DIR      # an engine directory with TensorRT plans (kangaroo-export engines)

For every precision with plans and every graph: the same random but valid feeds (``GraphSpec.random_feeds``, one
draft step n=1 and one verify step n=4, after some cached positions) run through the plan (step profile) and
through ONNX Runtime CPU on the graph's ONNX file; Polygraphy compares every output and prints its report.
Exits 1 if any graph differs beyond the precision's tolerance (token ids must match exactly, so a near-tie
between two logits can flip one: read the report before calling it a bug).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 1e-1}  # rtol = atol per precision (elementwise: either suffices)


def main(argv: list[str]) -> int:
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    from kangaroo_trt.contract.manifest import Manifest
    from kangaroo_trt.contract.plans import fresh_plan
    from kangaroo_trt.runtimes import ort_session

    engine_dir = Path(argv[0])
    manifest = Manifest.read(engine_dir)
    if manifest.tensorrt is None:
        print(f"error: {engine_dir} has no TensorRT plans: run kangaroo-export engines --engine-dir {engine_dir}")
        return 2
    failures = 0
    for precision in manifest.tensorrt.plans:
        for graph, entry in manifest.graphs[precision].items():
            rng = np.random.default_rng(0)
            feeds = [entry.spec.random_feeds(n, past, rng, manifest.model.vocab_size) for n, past in ((1, 7), (4, 12))]
            runners = [
                TrtRunner(EngineFromBytes(fresh_plan(engine_dir, manifest, precision, graph)),
                          name=f"tensorrt/{graph}/{precision}", optimization_profile=0),
                OnnxrtRunner(ort_session(engine_dir / entry.file), name=f"onnxruntime-cpu/{graph}/{precision}"),
            ]
            results = Comparator.run(runners, data_loader=feeds)
            tol = TOLERANCE[precision]
            ok = bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(rtol=tol, atol=tol)))
            failures += not ok
            print(f"{graph}/{precision}: TensorRT {'matches' if ok else 'DIFFERS FROM'} ONNX Runtime (tolerance {tol})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
