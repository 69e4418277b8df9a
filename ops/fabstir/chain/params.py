"""Deployment parameters: one checked-in file per network under deployments/params/."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]
PARAMS_DIR = REPO_ROOT / "deployments" / "params"


@dataclass(frozen=True)
class DeployParams:
    """Everything `deploy` sets, in the smallest unit of each token."""

    fee_bps: int = 1000
    settlement_window: int = 3600
    min_stake: int = 1000 * 10**18
    unbonding_period: int = 7 * 24 * 3600
    eth_min_deposit: int = 5 * 10**14
    usdc_min_deposit: int = 1_000_000
    fab_supply: int = 10**9 * 10**18
    # Live networks name real token addresses; None means deploy a local mock.
    usdc_address: str | None = None
    fab_address: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeployParams:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"comment", "network", "roles"}
        if unknown:
            raise ValueError(f"unknown deployment parameters: {sorted(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_params(name: str) -> DeployParams:
    """Parameters of a network by file stem (e.g. `local`, `base-sepolia`)."""
    path = PARAMS_DIR / f"{name}.json"
    return DeployParams.from_dict(json.loads(path.read_text()))
