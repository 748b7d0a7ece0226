# The two commands the README starts with:
#   make demo   set up, index the bundled sample corpus, search it
#   make test   set up with the test tools, run the whole test suite (starts a throwaway PostgreSQL)
#   make test-fast   the fast lane only (-m "not slow": the hashing fake encoder, no real model)
VENV ?= .venv
PY := $(VENV)/bin/python
STORE ?= /tmp/semindex-demo
export HF_HUB_OFFLINE := 1

.PHONY: setup setup-dev demo test test-fast lint bench

setup:
	@bash scripts/setup.sh

setup-dev:
	@SEMINDEX_EXTRAS=dev bash scripts/setup.sh

demo: setup
	$(VENV)/bin/semindex index samples/sample.jsonl --store $(STORE)
	$(VENV)/bin/semindex search "how do black holes form" -k 3 --store $(STORE)
	$(VENV)/bin/semindex search "baking bread at home" -k 3 --store $(STORE) --filter '{"topic": "cooking"}'

# scripts/test.sh starts (and stops) a throwaway PostgreSQL when SEMINDEX_TEST_PG_URL is unset,
# so a fresh machine runs exactly what .ci/run runs.
test: setup-dev
	@PY=$(PY) bash scripts/test.sh $(PYTEST_ARGS)

test-fast: setup-dev
	@PY=$(PY) bash scripts/test.sh -m "not slow" $(PYTEST_ARGS)

lint: setup-dev
	$(VENV)/bin/ruff check semindex tests benchmarks
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy  # --strict over semindex: pyproject [tool.mypy] (py.typed ships)
