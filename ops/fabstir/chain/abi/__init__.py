"""ABIs of the deployable contracts, exported from the compiled build (tools/export_abis.py)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

ABI_DIR = Path(__file__).resolve().parent

CONTRACTS = (
    "FABToken",
    "MockERC20",
    "ModelRegistry",
    "NodeRegistry",
    "ProofSystem",
    "HostEarnings",
    "Treasury",
    "JobMarketplace",
)


@cache
def load_abi(name: str) -> list[dict[str, Any]]:
    """The ABI of contract `name` (one of CONTRACTS)."""
    if name not in CONTRACTS:
        raise KeyError(f"no ABI for {name!r}; known: {', '.join(CONTRACTS)}")
    abi: list[dict[str, Any]] = json.loads((ABI_DIR / f"{name}.json").read_text())
    return abi
