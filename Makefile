# The two commands the README starts with:
#   make demo   set up, index the bundled sample corpus, search it
#   make test   set up with the test tools, run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STORE ?= /tmp/semindex-demo
export HF_HUB_OFFLINE := 1

.PHONY: setup setup-dev demo test lint bench

setup:
	@bash scripts/setup.sh

setup-dev:
	@SEMINDEX_EXTRAS=dev bash scripts/setup.sh

demo: setup
	$(VENV)/bin/semindex index samples/sample.jsonl --store $(STORE)
	$(VENV)/bin/semindex search "how do black holes form" -k 3 --store $(STORE)
	$(VENV)/bin/semindex search "baking bread at home" -k 3 --store $(STORE) --filter '{"topic": "cooking"}'

test: setup-dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup-dev
	$(VENV)/bin/ruff check semindex tests benchmarks
