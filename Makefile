# The two commands the README names: `make demo` and `make test`. Both set up what they need first.
SHELL := /bin/bash
VENV := .venv/bin
PYTEST_WORKERS ?= 2

.PHONY: setup demo test lint clean

setup:
	./scripts/bootstrap.sh

demo: setup
	./scripts/demo.sh

lint: setup
	$(VENV)/ruff check lib tests benchmarks scripts infra
	shellcheck infra/*.sh scripts/*.sh

test: lint
	$(VENV)/pytest -n $(PYTEST_WORKERS) --dist loadfile --nbval-lax --nbval-current-env -p no:cacheprovider tests notebooks

clean:
	rm -rf .venv runs .pytest_cache .ruff_cache
