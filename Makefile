# `make demo` trains the CPU demo and samples from it; `make test` runs the tests.
# Both create .venv on first use and install the project into it (editable, so edits take effect);
# they reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_RUN ?= digits-demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: demo test test-quick lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,fid,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) train.py --config Configs/digits.yaml log.run_name=$(DEMO_RUN)
	$(PY) inference.py --checkpoint Models/$(DEMO_RUN) --video mp4

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup

test-quick: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_models.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
