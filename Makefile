# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
ENV := . tools/env.sh &&

.PHONY: setup demo test invariants fuzz bench bench-host bench-demo bench-gateway soak lint clean

## demo: set up, then one full paid session on an embedded local chain with the bundled model
demo: setup
	@$(ENV) fabstir demo

setup:
	@tools/setup.sh

## test: set up, then every suite CI runs (ape tests on anvil, forge invariants, lint, types)
test: setup
	@$(ENV) tools/run-tests.sh

invariants: setup
	@$(ENV) forge test --root . --config-path foundry.toml -vv

## fuzz: long invariant runs (not part of `make test`)
fuzz: setup
	@$(ENV) FOUNDRY_PROFILE=fuzz forge test --root . --config-path foundry.toml -vv

bench: setup
	@$(ENV) python bench/gas.py

bench-host: setup
	@$(ENV) python bench/host.py

bench-gateway: setup
	@$(ENV) python bench/gateway.py

## soak: the whole market under load and faults (DURATION seconds, default 1800; SEED)
DURATION ?= 1800
SEED ?= 15
soak: setup
	@$(ENV) python bench/soak.py --duration $(DURATION) --seed $(SEED)

bench-demo: setup
	@$(ENV) python bench/demo.py

lint: setup
	@$(ENV) ruff check ops tests scripts bench && ruff format --check ops tests scripts bench && mypy

clean:
	rm -rf .build out cache contracts/.cache .venv node_modules .solcx
