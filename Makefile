# tickflow: `make run` and `make test` do all set-up themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test bench services clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

services:
	bash infra/scripts/ensure-services.sh

run: install services
	$(BIN)/tickflow run --source synthetic --rate 2000

test: install services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install services
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) data .pytest_cache
