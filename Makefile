# mailpulse — every target sets up .venv itself when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-unit test-integration chaos bench bench-hop soak eval-identity lint typecheck schemas clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/mailpulse run --demo

test: $(STAMP)
	$(BIN)/pytest -q

chaos: $(STAMP)
	$(BIN)/pytest -q -rP -m chaos

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/agents

test-integration: $(STAMP)
	$(BIN)/pytest -q -m "not chaos" tests/integration

bench: $(STAMP)
	$(BIN)/python -m bench.ingest

bench-hop: $(STAMP)
	$(BIN)/python -m bench.profile_hop

soak: $(STAMP)
	$(BIN)/python -m bench.soak

eval-identity: $(STAMP)
	$(BIN)/python -m bench.eval_identity

lint: $(STAMP)
	$(BIN)/ruff check streams schemas models tests bench
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/mailpulse schemas --out schemas/json

clean:
	rm -rf $(VENV) .mailpulse .pytest_cache .mypy_cache .ruff_cache
