"""Raw JSON-RPC calls for anvil's test methods (evm_setAutomine, anvil_reorg, ...),
which have no web3 wrapper. A plain module: import it as `support.anvil`."""

from __future__ import annotations

from typing import Any

from web3 import Web3


def rpc(url: str, method: str, *params: Any) -> Any:
    """Call `method` on the node at `url`; its `result`."""
    w3 = Web3(Web3.HTTPProvider(url))
    return w3.provider.make_request(method, list(params))["result"]  # type: ignore[arg-type]
