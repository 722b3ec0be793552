#!/usr/bin/env bash
# GPU check: the GPU-marked tests, then scripts/gpu_check.py (every backend present x precision, exact mode: AR and
# Kangaroo ms/token, Kangaroo == AR over 24 chat prompts x 128 new tokens, the kangaroo-check table, kernels per step,
# transformers generate as the peer), and (with TensorRT) Polygraphy's graph-by-graph comparison of the plans.
# For a machine with an NVIDIA GPU and a CUDA build of torch (plus transformers, onnx, onnxruntime, cupy; TensorRT,
# onnxruntime-gpu and polygraphy optional; no internet needed; scripts/gpu_carry.sh brings the real model along).
#
# Results go to bench/results/gpu-<name>/ (results.json, report.md, log.txt; <name>: the GPU's name in lower case,
# e.g. gpu-nvidia-h200), under $OUT when it is set (the device machine's folder that comes back): the lead commits
# them when a GPU run happens. results.json and report.md are rewritten after every row, so a run cut short keeps
# what it measured.
#
# Sized for a 15-minute device budget (machine start and the two gpu_carry.sh calls included): the GPU-marked tests
# get 120 s, gpu_check.py 420 s and starts no row after 330 s (--time-budget; the real model's engine build is
# about a minute of that). Exit status: 0 all passed, 1 a check failed (or the tests failed or timed out).
#
#   scripts/gpu_check.sh [gpu_check.py options, passed through: --prompts 24 --max-new-tokens 128 --also-loose ...]
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error

NAME=$("$PY" - <<'PYEOF'
import re, sys
import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {gpu or 'none'}", file=sys.stderr)
if gpu is None:
    sys.exit("error: no CUDA device visible to torch: run this on a GPU machine with a CUDA build of torch")
print(re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-"))
PYEOF
) || exit 2
RESULTS="${OUT:+$OUT/}bench/results/gpu-$NAME"
mkdir -p "$RESULTS" || exit 2
status=0

echo "== GPU-marked tests"
timeout 120 "$PY" -m pytest -q -m gpu tests/test_backends.py 2>&1 | tee "$RESULTS/pytest-log.txt"
rc=$?; [ $rc -eq 0 ] || { echo "GPU-marked tests: exit status $rc (124: timed out)"; status=1; }

echo "== gpu_check.py -> $RESULTS"
WORK="$(mktemp -d -t kangaroo-gpu-check.XXXXXX)"
timeout 420 "$PY" scripts/gpu_check.py --out "$WORK" --time-budget 330 --json "$RESULTS/results.json" "$@" 2>&1 \
  | tee "$RESULTS/log.txt"
rc=$?; [ $rc -eq 0 ] || { echo "gpu_check.py: exit status $rc (124: timed out; 1: a check failed)"; status=1; }

if "$PY" -c "import tensorrt, polygraphy" 2>/dev/null && [ -d "$WORK/engine" ]; then
  echo "== TensorRT vs ONNX Runtime, graph by graph (Polygraphy)"
  timeout 120 "$PY" scripts/trt_compare.py "$WORK/engine" || status=1
fi
exit $status
