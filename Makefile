PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint typecheck install clean peers bench demo docs docs-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# wsclient's main job in a minute, no network: a fake feed, a fault-injecting proxy, a live view.
demo: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,cli]'
	$(BIN)/wsclient demo

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks docs/_ext
	$(BIN)/ruff format --check src tests examples benchmarks docs/_ext

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

# Real peers for the tests: nginx and redis-server (apt, when absent and root) and the Node ws server
# (npm ci).
peers:
	bash tests/peers/install.sh

# Most tests wait on sockets, not the CPU: they run on four workers; the timing-bound and CPU-heavy
# ones (marked serial: the soaks, 100k messages into JetStream) run alone afterwards.
test: lint typecheck peers docs-check
	$(BIN)/python -m pytest -n 4 -m "not serial"
	$(BIN)/python -m pytest -m serial

# The documentation site (mkdocs, material, mkdocstrings): `make docs` builds it into site/ (open
# site/index.html); `make docs-check`, part of `make test`, builds it with --strict, so a broken
# link, a docstring reference to nothing or a griffe warning fails. tests/test_docs.py runs the
# pages' Python blocks.
DOCS_STAMP := $(VENV)/.docs-installed
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs

$(DOCS_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(MKDOCS) build --strict

docs-check: $(DOCS_STAMP)
	$(MKDOCS) build --strict --quiet

# Benchmarks against the peers (not part of `make test`): benchmarks/results/latest.md + PNG charts.
# `make bench QUICK=1` for 100k messages and 3 rounds; N=... messages; BENCH_ARGS="--only throughput"
# (measures: throughput, latency, deadlink, idle, pool, bus; `--only bus` writes results/bus.md).
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run $(if $(QUICK),--quick) $(if $(N),--n $(N)) $(BENCH_ARGS)

# Chaos soak (not part of `make test`, which runs a 30 s one): prints the report, fails on a broken check.
# `make soak DURATION=600 SEED=7`.
.PHONY: soak
DURATION ?= 600
SEED ?= 1
soak: $(STAMP)
	$(BIN)/python -m wsclient.testing.soak --duration $(DURATION) --seed $(SEED)

# Bus soak (not part of `make test`, which runs a 25 s one): venue -> client -> NATS JetStream sink ->
# nats-server, faults on both sides, the stream read back. `make soak-bus DURATION=600 SEED=7`.
.PHONY: soak-bus
soak-bus: $(STAMP)
	$(BIN)/python -m wsclient.testing.bus_soak --duration $(DURATION) --seed $(SEED)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis site
