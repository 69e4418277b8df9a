# Source this file (". tools/env.sh") to use ape, anvil and fabstir by hand.
_fabstir_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
export SOLCX_BINARY_PATH="$_fabstir_root/.solcx"
export PATH="$_fabstir_root/node_modules/@foundry-rs/anvil-linux-amd64/bin:$_fabstir_root/node_modules/@foundry-rs/forge-linux-amd64/bin:$_fabstir_root/.venv/bin:$PATH"
unset _fabstir_root
