# lmr-jax: one-command set-up, tests and demo.
#   make test   create .venv if missing, install requirements-dev.txt, run the whole suite
#               in TEST_WORKERS (2) processes, the slowest files first (tests/conftest.py)
#   make demo   create .venv if missing, install requirements, run the synthetic end-to-end demo
#   make doctor create .venv if missing, install requirements, check devices, versions and
#               one train step + embedding per device (python -m lmr_jax.doctor)
#   make bench  the benchmarks' quick run (python -m benchmarks.summary --quick)
#   make clean  remove what the demo made (runs/demo, data/demo*)
# Both installs use the exact CPU set of constraints-cpu.txt; requirements.txt holds the ranges.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_RT := $(VENV)/.installed-runtime
STAMP_DEV := $(VENV)/.installed-dev
# Test processes of make test (pytest-xdist; files are kept whole in one process). Each takes
# up to about 7 GB at its peak; TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2

.PHONY: test demo doctor bench lint clean venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP_RT): requirements.txt constraints-cpu.txt | $(PY)
	$(PY) -m pip install -q -c constraints-cpu.txt -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(STAMP_DEV): requirements-dev.txt requirements.txt constraints-cpu.txt | $(PY)
	$(PY) -m pip install -q -c constraints-cpu.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP_RT) $@

venv: $(STAMP_RT)

test: $(STAMP_DEV)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check lmr_jax benchmarks scripts tests configs

demo: $(STAMP_RT)
	$(PY) scripts/demo.py --workdir runs/demo

doctor: $(STAMP_RT)
	$(PY) -m lmr_jax.doctor

bench: $(STAMP_DEV)
	$(PY) -m benchmarks.summary --quick

clean:
	rm -rf runs/demo data/demo data/demo_prepared
