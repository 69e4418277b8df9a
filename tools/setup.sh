#!/usr/bin/env bash
# One idempotent set-up for a clean clone: Python virtualenv, pinned node
# tools, the solc compiler for py-solc-x, and the bundled model.
# Nothing here is needed at run time from the network afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SOLC_VERSION=0.8.28
PY=${PYTHON:-python3}

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "installing Python dependencies (llama-cpp-python builds from source the first time: ~6 min)"
  .venv/bin/pip install -q pip==26.3 wheel==0.45.1
  .venv/bin/pip install -q -r requirements.lock
  .venv/bin/pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi

if [ ! -x node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] || [ ! -d node_modules/solc ] \
   || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  step "installing node tools (anvil, forge, solc-js, OpenZeppelin)"
  npm ci --no-audit --no-fund --loglevel=error
fi

# py-solc-x finds compilers as $SOLCX_BINARY_PATH/solc-v<version>. Where the
# official binary can be downloaded we use it; offline we link our solc-js shim.
mkdir -p .solcx
if [ ! -e ".solcx/solc-v$SOLC_VERSION" ]; then
  step "installing solc $SOLC_VERSION"
  if SOLCX_BINARY_PATH="$ROOT/.solcx" timeout 60 .venv/bin/python -c \
      "import solcx; solcx.install_solc('$SOLC_VERSION')" >/dev/null 2>&1; then
    echo "    native solc downloaded"
  else
    ln -sf ../tools/solc-shim.js ".solcx/solc-v$SOLC_VERSION"
    echo "    offline: using the solc-js shim (tools/solc-shim.js)"
  fi
fi

step "compiling the contracts"
SOLCX_BINARY_PATH="$ROOT/.solcx" PATH="$ROOT/node_modules/@foundry-rs/anvil-linux-amd64/bin:$PATH" \
  .venv/bin/ape compile >/dev/null

step "fetching the bundled model"
.venv/bin/python -m fabstir.models fetch --quiet
step "set-up complete"
