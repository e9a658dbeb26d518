# mailpulse — every target sets up .venv itself when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-unit test-integration chaos bench bench-hop bench-floor bench-forwarded soak eval-identity eval-predictions models lint typecheck schemas clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/mailpulse run --demo

# The broker-free tiers on two processes, then the broker tier on two, a test file each (a file's
# tests share its fixtures: a scenario is replayed once, not once per process).  Its tests spend most
# of their time waiting (rebalances, timers, a broker's fetch wait): 399-410 s in three runs on 2 cores,
# against 725-747 s on one process.
test: $(STAMP)
	$(BIN)/pytest -q -n 2 tests/unit tests/agents tests/models
	$(BIN)/pytest -q -n 2 --dist loadfile tests/integration

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

bench-floor: $(STAMP)
	$(BIN)/python -m bench.typed_floor

bench-forwarded: $(STAMP)
	$(BIN)/python -m bench.forwarded

soak: $(STAMP)
	$(BIN)/python -m bench.soak

# The shipped models (models/shipped/README.md): the demo shop's generated history, trained as a user would.
MODELS_HISTORY := $(VENV)/models-history.jsonl
models: $(STAMP)
	$(BIN)/mailpulse generate --users 2000 --days 150 --seed 11 --start 2026-01-01 --out $(MODELS_HISTORY)
	rm -f models/shipped/purchase-*.txt models/shipped/metrics-*.json
	$(BIN)/mailpulse train --events $(MODELS_HISTORY) --as-of 2026-05-31 --horizon-days 30 --out models/shipped >/dev/null

eval-identity: $(STAMP)
	$(BIN)/python -m bench.eval_identity

# The purchase model on CDNOW beside BG/NBD and recency-frequency (bench/eval_predictions.py; fetches the data once).
eval-predictions: $(STAMP)
	$(BIN)/python -m bench.eval_predictions

lint: $(STAMP)
	$(BIN)/ruff check streams schemas models tests bench
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/mailpulse schemas --out schemas/json

clean:
	rm -rf $(VENV) .mailpulse .pytest_cache .mypy_cache .ruff_cache
