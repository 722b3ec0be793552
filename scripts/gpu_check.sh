#!/usr/bin/env bash
# GPU check: the GPU-marked tests, a short Kangaroo-vs-AR benchmark of the CUDA backends present, and (with
# TensorRT) Polygraphy's graph-by-graph comparison of the TensorRT plans with ONNX Runtime.
# For a machine with an NVIDIA GPU and a CUDA build of torch (plus transformers, onnx, onnxruntime, cupy,
# cuda-python; TensorRT and polygraphy optional; no internet needed). Target: under 8 minutes. Its results update
# the README's backend status table.
#
#   scripts/gpu_check.sh [--model smollm2-135m] [--precisions fp32,fp16] [--max-new-tokens 64]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error

"$PY" - <<'PYEOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
if not torch.cuda.is_available():
    raise SystemExit("error: no CUDA device visible to torch: run this on a GPU machine with a CUDA build of torch")
PYEOF

echo "== GPU-marked tests"
timeout 300 "$PY" -m pytest -q -m gpu tests/test_backends.py
echo "== benchmark"
WORK="$(mktemp -d -t kangaroo-gpu-check.XXXXXX)"
timeout 240 "$PY" scripts/gpu_check.py --out "$WORK" "$@"
if "$PY" -c "import tensorrt, polygraphy" 2>/dev/null; then
  echo "== TensorRT vs ONNX Runtime, graph by graph (Polygraphy)"
  timeout 120 "$PY" scripts/trt_compare.py "$WORK/engine"
fi
