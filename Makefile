# `make test` is the one test command: README and .ci/run both call it.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python

.PHONY: test lint venv golden docs mixin prometheusrule lock bench bench-budget bench-subaccounts bench-soak bench-streams bench-streams-1000 bench-slowreaders bench-reloadstorm bench-encode bench-liverisk clean

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

# Rewrite the generated parts of docs/ (the config key reference) from their declaration in
# the code (the test suite fails while they disagree).
docs: venv
	$(VPY) docs/generate_docs.py

# The monitoring mixin: prometheus/rules.yml, prometheus/alerts.yml, the Grafana dashboard and
# deploy/kubernetes/base/prometheusrule.yaml, generated from prometheus/mixin/ with the settings of
# prometheus/mixin.yaml (the test suite fails while the checked-in files are stale). With your own
# settings (only the keys you change) into a directory of your own:
#   make mixin CONFIG=my-mixin.yaml OUT=out/
CONFIG ?=
OUT ?=
mixin: venv
	$(VPY) prometheus/mixin/generate.py $(if $(CONFIG),--config $(CONFIG)) $(if $(OUT),--out $(OUT))

# The old name of `make mixin` (it wrote only the PrometheusRule).
prometheusrule: mixin

# The image's pinned dependencies, with hashes (the Dockerfile installs only these, --require-hashes):
# requirements.lock from pyproject.toml's dependencies, requirements-build.lock from requirements-build.in.
# Run after changing either, or to take new releases; review the diff, then commit it.
PIP_COMPILE = $(VPY) -m piptools compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links
lock: venv
	$(VPY) -m pip install --quiet 'pip-tools>=7.4'
	$(PIP_COMPILE) --upgrade --output-file requirements.lock pyproject.toml
	$(PIP_COMPILE) --upgrade --output-file requirements-build.lock requirements-build.in

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

# Issue 22: 1000 accounts sharing 50 keys a connection, short phases (about 3 minutes).
bench-streams-1000: venv
	$(VPY) -m benchmarks.streams --thousand $(BENCH_ARGS)

# Issue 24: live risk, 300 accounts x 5 positions over 50 symbols (about 2 minutes; --orders adds
# 1,000 order events a second).
bench-liverisk: venv
	$(VPY) -m benchmarks.liverisk $(BENCH_ARGS)

bench-slowreaders: venv
	$(VPY) -m benchmarks.slowreaders $(BENCH_ARGS)

bench-reloadstorm: venv
	$(VPY) -m benchmarks.reloadstorm $(BENCH_ARGS)

bench-encode: venv
	$(VPY) -m benchmarks.encode $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
