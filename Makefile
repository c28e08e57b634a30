# `make test` is the one test command: README and .ci/run both call it.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python

.PHONY: test lint venv golden prometheusrule bench bench-budget bench-subaccounts bench-soak bench-streams bench-slowreaders bench-encode clean

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip

venv: $(VPY)
	$(VPY) -m pip install --quiet -e '.[test]'

test: lint
	$(VPY) -m pytest -q $(PYTEST_ARGS)

# ruff (whole repository) and mypy (exporter/, strict); both configured in pyproject.toml.
lint: venv
	$(VPY) -m ruff check
	$(VPY) -m mypy

# Rewrite tests/golden/ from the current output (review the diff, then commit it).
golden: venv
	UPDATE_GOLDEN=1 $(VPY) -m pytest -q tests/test_golden.py

# Rewrite deploy/kubernetes/base/prometheusrule.yaml from prometheus/rules.yml and alerts.yml
# (the test suite fails while the two disagree).
prometheusrule: venv
	$(VPY) deploy/kubernetes/prometheusrule.py

# Benchmarks (see docs/performance.md); each writes benchmarks/results/<name>.json.
bench: venv
	$(VPY) -m benchmarks.scrape $(BENCH_ARGS)

bench-budget: venv
	$(VPY) -m benchmarks.budget $(BENCH_ARGS)

bench-subaccounts: venv
	$(VPY) -m benchmarks.subaccounts $(BENCH_ARGS)

bench-soak: venv
	$(VPY) -m benchmarks.soak $(BENCH_ARGS)

bench-streams: venv
	$(VPY) -m benchmarks.streams $(BENCH_ARGS)

bench-slowreaders: venv
	$(VPY) -m benchmarks.slowreaders $(BENCH_ARGS)

bench-encode: venv
	$(VPY) -m benchmarks.encode $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
