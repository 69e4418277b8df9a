#!/usr/bin/env bash
# Every suite `make test` runs, in order of how fast they fail. Expects
# tools/env.sh to be sourced (the Makefile does it).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> ruff"
ruff check ops tests scripts bench
ruff format --check ops tests scripts bench
echo "==> mypy"
mypy
if [ -f foundry.toml ]; then
  echo "==> forge invariant tests"
  forge test --root . --config-path foundry.toml
fi
echo "==> ape test (anvil)"
ape test tests "$@"
