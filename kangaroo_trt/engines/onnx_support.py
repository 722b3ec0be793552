"""What TensorRT's ONNX parser accepts, written down, and a check of a graph against it (no TensorRT needed).

A CPU pre-check only: it catches an unsupported operator or opset at export time on machines without TensorRT.
The authority is TensorRT's own parser (``builder.py`` via Polygraphy) and, on a GPU, Polygraphy's comparison of
each plan with ONNX Runtime (``scripts/trt_compare.py``); where they disagree with this table, they win.

Source: onnx/onnx-tensorrt ``docs/operators.md`` at the "ONNX-TensorRT 10.1 GA release" commit
(96e781103cfc4adf4a6bb557e94bac8e693f6f4c, 2024-06-17), "TensorRT 10.0 supports operators in the inclusive
range of opset 9 to opset 20": every operator marked ``Y`` in its support matrix, and the restrictions
that matter for our graphs. This is the newest operator table available to this project; TensorRT 11 is
*assumed* to accept at least the same set (it has not been checked against a TensorRT 11 parser: no GPU).
Everything in the standard domain only: a ``com.microsoft`` contrib op (what ONNX Runtime's graph
optimizer or ``UseQDQContribOps`` would add) is rejected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

TENSORRT_TARGET = "TensorRT 10.0/10.1 ONNX parser (onnx-tensorrt 10.1 GA docs/operators.md); TensorRT 11 assumed a superset"
MIN_OPSET, MAX_OPSET = 9, 20

SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil Celu
Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear
Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid
HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization
Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN
RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size
Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# Restrictions from the same table: (op, input index) that must be a constant (initializer or Constant node).
CONSTANT_INPUTS = {("Slice", 3): "axes", ("Squeeze", 1): "axes", ("Unsqueeze", 1): "axes", ("ReduceMax", 1): "axes",
                   ("ReduceMean", 1): "axes", ("ReduceSum", 1): "axes", ("TopK", 1): "K", ("CumSum", 1): "axis"}
# Q/DQ: "`y_zero_point` must be 0" / "`x_zero_point` must be zero"; INT8 is the quantized type we use.
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def problems(model: onnx.ModelProto) -> list[str]:
    """Everything in ``model`` the TensorRT ONNX parser would reject, one line each (empty: accepted)."""
    out = []
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    version = opsets.get("ai.onnx")
    if version is None or not MIN_OPSET <= version <= MAX_OPSET:
        out.append(f"opset {version} is outside {MIN_OPSET}..{MAX_OPSET}")
    out += [f"opset domain {d!r} is not the standard one" for d in opsets if d not in ("ai.onnx",)]
    constants = {i.name: i for i in model.graph.initializer}  # protos; only small zero points are read
    constant_nodes = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for node in model.graph.node:
        where = f"{node.name or node.op_type}"
        if node.domain not in ("", "ai.onnx"):
            out.append(f"{where}: {node.domain}.{node.op_type} is a custom-domain op")
        elif node.op_type not in SUPPORTED_OPS:
            out.append(f"{where}: {node.op_type} is not supported")
        for (op, index), what in CONSTANT_INPUTS.items():
            if node.op_type == op and len(node.input) > index and node.input[index]:
                name = node.input[index]
                if name not in constants and name not in constant_nodes:
                    out.append(f"{where}: {op} input {what} must be a constant")
        if node.op_type in QDQ_OPS and len(node.input) > 2 and node.input[2]:
            proto = constants.get(node.input[2])
            zp = numpy_helper.to_array(proto) if proto is not None else None
            if zp is None or zp.dtype != np.int8 or np.any(zp != 0):
                out.append(f"{where}: {node.op_type} needs an int8 zero point of 0")
    return out


def check_onnx(path: Path) -> list[str]:
    return problems(onnx.load(str(path), load_external_data=False))
