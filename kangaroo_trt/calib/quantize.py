"""fp32 ONNX graph -> INT8 Q/DQ ONNX graph that TensorRT and ONNX Runtime both run. Two forms:

* ``quantize_graph`` (W8A8, calibrated on captured samples): int8 weights *and* activations;
* ``weight_only_graph`` (W8, no calibration): int8 weights, fp32 activations (``DequantizeLinear`` on each
  projection weight only). For batch-1 decoding, which is bound by reading weights, this keeps most of
  the INT8 gain on a GPU. TensorRT 10+ documents weight-only quantization as this pattern (constant int8
  weight -> DequantizeLinear -> MatMul); not checked against a real TensorRT here (no GPU). ONNX Runtime
  CPU runs it as DequantizeLinear + fp32 MatMul, i.e. slower than fp32 (measured in the quality report).

Which graph gets which (``calib/int8.py``) follows from the lossless rule. A static activation scale turns
a last-bit difference into a whole quantization step, and steps cascade through the layers. The deep graph
computes a position inside a verify pass (n > 1, attending to the other new rows in-graph) in a different
float order than the same position in plain AR decoding (n = 1, from the cache); with W8A8 that difference
grew into different tokens (bench/results/README.md, "INT8 design measurements"). So the deep graph is weight-only (its numerics stay those of fp32: near-ties only), while the shallow graph
(always n = 1 after the prompt, identical in both modes) and the adapter (drafts only; verified anyway)
are W8A8.

W8A8 tool: ONNX Runtime's ``quantize_static`` with ``QuantFormat.QDQ``. Why this one and not NVIDIA ModelOpt:
it ships inside the ``onnxruntime`` package the project already depends on (ModelOpt's extras pin older
onnx / onnxruntime / transformers), it calibrates on ONNX Runtime CPU (no GPU needed), and it writes plain
ONNX ``QuantizeLinear`` / ``DequantizeLinear`` pairs, the form TensorRT's strongly typed INT8 path imports.

What is quantized, and how:

* only the linear projections: ``MatMul`` nodes whose B input is a weight initializer (q/k/v/o, gate/up).
  Attention's activation x activation MatMuls (scores, probs @ V), the norms, rotary, softmax and the
  argmax heads stay fp32;
* kept fp32 by default (``KEEP_FP32``), as measured (bench/results/README.md, "INT8 design measurements"): the
  LM head (the paper's and TensorRT-LLM's advice), and ``down_proj``, whose input SiLU(gate) * up has outlier
  channels that one per-tensor scale cannot cover;
* weights: int8, symmetric, per output channel (axis 1 of the [in, out] MatMul weight);
* activations: int8, symmetric (zero point 0, as TensorRT requires), one scale per tensor from the min/max
  seen over the captured samples.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from ..errors import KangarooError
from ..contract.spec import GraphSpec
from ..export.onnx_export import save_onnx
from .capture import Sample

# minmax only: onnxruntime 1.31's histogram calibrators (percentile, entropy) fail on samples of different n.
CALIBRATION_METHODS = ("minmax",)
KEEP_FP32 = ("lm_head", "down_proj")  # node-name parts of projections left unquantized (see above)


class QuantizationError(KangarooError):
    """The INT8 variant of a graph could not be produced."""


def linear_matmuls(model: onnx.ModelProto, keep_fp32: tuple[str, ...] = KEEP_FP32) -> list[str]:
    """Names of the MatMul nodes to quantize: weight-input MatMuls (projections) not named in ``keep_fp32``."""
    weights = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights
            and not any(f"/{part}/" in n.name for part in keep_fp32)]


class _Reader:
    """ONNX Runtime ``CalibrationDataReader``: one feed dict per captured sample, built lazily."""

    def __init__(self, spec: GraphSpec, samples: list[Sample]) -> None:
        self.spec, self.samples, self.i = spec, samples, 0

    def get_next(self):
        if self.i >= len(self.samples):
            return None
        self.i += 1
        return self.samples[self.i - 1].feeds(self.spec)

    def rewind(self) -> None:
        self.i = 0


def quantize_graph(fp32_path: Path, out_path: Path, spec: GraphSpec, samples: list[Sample],
                   method: str = "minmax", keep_fp32: tuple[str, ...] = KEEP_FP32) -> list[str]:
    """Write ``out_path`` (+ ``out_path.data``); returns the names of the quantized MatMul nodes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise QuantizationError(f"calibration method {method!r} is not supported (supported: {', '.join(CALIBRATION_METHODS)})")
    if not samples:
        raise QuantizationError(f"{spec.name}: no calibration samples were captured: give longer calibration prompts")
    model = onnx.load(str(fp32_path), load_external_data=False)
    nodes = linear_matmuls(model, keep_fp32)
    if not nodes:
        raise QuantizationError(f"{spec.name}: no MatMul with a weight input found in {fp32_path.name}: nothing to quantize")
    scratch = out_path.with_name(out_path.stem + ".qdq.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs advice ("consider pre-processing") on the root logger
    try:
        quantize_static(
            str(fp32_path), str(scratch), _Reader(spec, samples),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=True,
            extra_options={
                "ActivationSymmetric": True, "WeightSymmetric": True, "MatMulConstBOnly": True,
                "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                # No CalibMaxIntermediateOutputs: in onnxruntime 1.31 it discards the batches it flushes. MinMax
                # keeps only per-tensor ReduceMin/ReduceMax outputs per sample, so memory stays small anyway.
            },
        )
        quantized = onnx.load(str(scratch))  # pulls its external data in
    finally:
        root.setLevel(level)
        for f in out_path.parent.glob(scratch.name + "*"):
            f.unlink()
        for f in out_path.parent.glob("augmented_model*"):  # the calibrator's scratch model, if left behind
            f.unlink()
    quantized.graph.name = spec.name
    save_onnx(quantized, out_path)
    _check_symmetric(onnx.load(str(out_path)), spec.name)
    return nodes


def _check_symmetric(model: onnx.ModelProto, graph: str) -> None:
    """TensorRT takes only int8 Q/DQ with zero point 0: refuse anything else here, not at engine build."""
    from onnx import numpy_helper

    init = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zp = init.get(node.input[2])
        if zp is None:
            continue
        z = numpy_helper.to_array(zp)
        if z.dtype != np.int8 or np.any(z != 0):
            raise QuantizationError(f"{graph}: {node.name} has a {z.dtype} zero point {z.ravel()[:3]}: TensorRT needs int8 with zero point 0")


def weight_only_graph(fp32_path: Path, out_path: Path, spec: GraphSpec, keep_fp32: tuple[str, ...] = ("lm_head",)) -> list[str]:
    """Int8 per-output-channel symmetric weights behind ``DequantizeLinear``; activations stay fp32."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32_path))
    nodes = set(linear_matmuls(model, keep_fp32))
    init = {i.name: i for i in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    graph_nodes, dropped = [], set()
    for node in model.graph.node:
        if node.name in nodes:
            weight = node.input[1]
            w = numpy_helper.to_array(init[weight]).astype(np.float32)  # [in, out]
            scale = np.abs(w).max(axis=0) / 127.0
            scale[scale == 0] = 1.0
            q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
            base = node.name.strip("/").replace("/", ".") + ".weight"
            model.graph.initializer.extend([numpy_helper.from_array(q, base + "_int8"),
                                            numpy_helper.from_array(scale.astype(np.float32), base + "_scale"),
                                            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), base + "_zero_point")])
            graph_nodes.append(helper.make_node("DequantizeLinear", [base + "_int8", base + "_scale", base + "_zero_point"],
                                                [base + "_dequantized"], name=node.name.rsplit("/", 1)[0] + "/weight_dq", axis=1))
            node.input[1] = base + "_dequantized"
            users[weight] -= 1
            if users[weight] == 0:
                dropped.add(weight)
        graph_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(graph_nodes)
    kept = [i for i in model.graph.initializer if i.name not in dropped]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    model.graph.name = spec.name
    save_onnx(model, out_path)
    _check_symmetric(onnx.load(str(out_path)), spec.name)
    return sorted(nodes)
