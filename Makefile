# The README's two commands: `make demo` and `make test`. Each one creates the
# environment when missing (.venv -> a cached venv keyed by requirements.txt).
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: venv demo test test-gpu bench verify info gpu-check gpu-check-dry-run clean

venv:
	@bash scripts/venv.sh

demo: venv
	$(PY) -m sstkd demo --out runs/demo

test: venv
	$(PY) -m pytest -q tests

test-gpu: venv
	$(PY) -m pytest -q -m gpu tests

bench: venv
	$(PY) -m sstkd bench --quick

verify: venv
	$(PY) -m sstkd verify

info: venv
	$(PY) -m sstkd info

# The GPU acceptance in one run, <= 7 min on a fresh H200 (bench/GPU_CHECKLIST.md). No `venv`
# prerequisite: the GPU machine has torch and triton installed and no internet to build one.
GPU_PY := $(shell test -x $(PY) && echo $(PY) || echo python3)

gpu-check:
	$(GPU_PY) -m sstkd.gpucheck $(GPU_CHECK_ARGS)

gpu-check-dry-run:
	$(GPU_PY) -m sstkd.gpucheck --dry-run $(GPU_CHECK_ARGS)

clean:
	rm -rf build dist *.egg-info runs .pytest_cache
