# The README's two commands: `make demo` and `make test`. Each one creates the
# environment when missing (.venv -> a cached venv keyed by requirements.txt).
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: venv demo test test-gpu bench verify info clean

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

clean:
	rm -rf build dist *.egg-info runs .pytest_cache
