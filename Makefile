# tickflow: `make run` and `make test` do all set-up themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
QUIX_VENV := .venv-quix
QUIX_STAMP := $(QUIX_VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test bench soak chaos services clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Quix Streams, the benchmark's comparison, needs an older confluent-kafka than tickflow: its own venv.
$(QUIX_STAMP): benchmarks/quix-requirements.txt
	test -x $(QUIX_VENV)/bin/python || $(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/pip install -q -r benchmarks/quix-requirements.txt
	touch $(QUIX_STAMP)

services:
	bash infra/scripts/ensure-services.sh

run: install services
	$(BIN)/tickflow run --source synthetic --rate 2000

test: install services
	$(BIN)/python -m pytest -m "not chaos" $(PYTEST_ARGS)

bench: install services $(QUIX_STAMP)
	$(BIN)/python -m benchmarks

# Every role side by side under synthetic load for SOAK_SECONDS (after a warm-up); the report
# (soak.md, soak.json, soak.png) and each role's log go to SOAK_OUT.
SOAK_SECONDS ?= 600
SOAK_RATE ?= 20000
SOAK_OUT ?= data/soak/$(shell date -u +%Y%m%dT%H%M%SZ)
soak: install services
	$(BIN)/python -m benchmarks.soak --seconds $(SOAK_SECONDS) --rate $(SOAK_RATE) --out $(SOAK_OUT)

# The fault scenarios of tests/chaos (marker chaos) at full length (1M trades each), then one
# summary row per scenario; make test runs their short combined version instead.
CHAOS_TRADES ?= 1000000
CHAOS_KILLS ?= 5
CHAOS_SUMMARY := .chaos-summary.jsonl
chaos: install services
	rm -f $(CHAOS_SUMMARY)
	TICKFLOW_CHAOS_TRADES=$(CHAOS_TRADES) TICKFLOW_CHAOS_KILLS=$(CHAOS_KILLS) TICKFLOW_CHAOS_SUMMARY=$(CURDIR)/$(CHAOS_SUMMARY) $(BIN)/python -m pytest tests/chaos -m chaos -q --timeout 14400 $(PYTEST_ARGS); \
	  status=$$?; $(BIN)/python -m tests.chaos.harness summary $(CHAOS_SUMMARY); exit $$status

clean:
	rm -rf $(VENV) $(QUIX_VENV) data .pytest_cache .chaos-summary.jsonl
