# `make test` is the one test command: README and .ci/run both call it.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python

.PHONY: test venv bench clean

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip

venv: $(VPY)
	$(VPY) -m pip install --quiet -e '.[test]'

test: venv
	$(VPY) -m pytest -q $(PYTEST_ARGS)

bench: venv
	$(VPY) -m benchmarks.scrape $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
