"""deployments/<chainId>.json: where a deployment lives, and how it was made.

Written by `ape run deploy` (atomically: a temporary file renamed into place), read by
the SDK and the CLI through `load_deployment`. Nothing else hard-codes an address.
This module needs neither ape nor a compiler.

The directory is deployments/ in the repository unless overridden: an explicit
argument wins, then $FABSTIR_DEPLOYMENTS_DIR. Tests and the Base Sepolia rehearsal
always write to a temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fabstir.chain.params import REPO_ROOT

SCHEMA = 1
ENV_DIR = "FABSTIR_DEPLOYMENTS_DIR"
DEFAULT_DIR = REPO_ROOT / "deployments"

# The system's own contracts, in deployment order (payment tokens that are deployed
# here, the token table's mocks, come right after FABToken under their symbols).
CORE_CONTRACTS = (
    "FABToken",
    "ModelRegistry",
    "NodeRegistry",
    "ProofSystem",
    "HostEarnings",
    "Treasury",
    "JobMarketplace",
)
_ALIASES = {"fab": "FABToken"}


class DeploymentError(Exception):
    """No deployment file for a chain, or it lacks what was asked for."""


@dataclass(frozen=True)
class ContractRecord:
    address: str
    # None for tokens that were not deployed here (configured live addresses).
    block: int | None = None
    tx_hash: str | None = None
    # keccak256 of the creation bytecode (without constructor arguments): a changed
    # contract is never mistaken for the recorded one.
    code_hash: str | None = None
    contract_type: str | None = None
    external: bool = False


@dataclass(frozen=True)
class TokenRecord:
    """One payment token as deployed: the params file's token table, with addresses.

    address: the zero address for the chain's coin. mock: a MockERC20 deployed here
    (local chains only: anyone may mint it), as opposed to a real token or the coin.
    """

    symbol: str
    decimals: int
    address: str
    mock: bool
    min_deposit: int


@dataclass(frozen=True)
class TxRecord:
    step: str
    tx_hash: str
    block: int
    gas_used: int
    contract: str | None = None


@dataclass
class Deployment:
    chain_id: int
    network: str
    deployer: str
    contracts: dict[str, ContractRecord]
    params: dict[str, Any]
    roles: dict[str, str]
    params_name: str = ""
    transactions: list[TxRecord] = field(default_factory=list)
    compiler: dict[str, Any] = field(default_factory=dict)
    git: dict[str, Any] = field(default_factory=dict)
    # False while a deploy is under way (written after each contract so an
    # interrupted live deploy can be resumed without paying twice).
    complete: bool = True
    verified_block: int | None = None
    updated_at: str = ""
    # The payment tokens the marketplace accepts, in its order (the chain's coin first).
    tokens: list[TokenRecord] = field(default_factory=list)
    schema: int = SCHEMA

    def address(self, name: str) -> str:
        """Address of contract `name` (e.g. "JobMarketplace", "FABToken") or of a
        payment token by symbol (e.g. "USDC")."""
        key = _ALIASES.get(name.lower(), name)
        for known, record in self.contracts.items():
            if known.lower() == key.lower():
                return record.address
        token = self.token(name)
        if token is not None:
            return token.address
        raise DeploymentError(
            f"deployment on chain {self.chain_id} has no {name!r}; it has {', '.join(self.contracts)}"
        )

    def token(self, symbol: str) -> TokenRecord | None:
        """The payment token with `symbol` (case-insensitive), or None."""
        return next((t for t in self.tokens if t.symbol.lower() == symbol.lower()), None)

    @property
    def addresses(self) -> dict[str, str]:
        return {name: record.address for name, record in self.contracts.items()}

    @property
    def first_block(self) -> int:
        blocks = [r.block for r in self.contracts.values() if r.block is not None]
        return min(blocks) if blocks else 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["contracts"] = {n: asdict(r) for n, r in self.contracts.items()}
        data["transactions"] = [asdict(t) for t in self.transactions]
        data["tokens"] = [asdict(t) for t in self.tokens]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Deployment:
        if data.get("schema") != SCHEMA:
            raise DeploymentError(f"unsupported deployments schema {data.get('schema')!r}")
        return cls(
            chain_id=int(data["chain_id"]),
            network=str(data.get("network", "")),
            deployer=str(data["deployer"]),
            contracts={n: ContractRecord(**r) for n, r in data["contracts"].items()},
            params=dict(data.get("params", {})),
            roles=dict(data.get("roles", {})),
            params_name=str(data.get("params_name", "")),
            transactions=[TxRecord(**t) for t in data.get("transactions", [])],
            compiler=dict(data.get("compiler", {})),
            git=dict(data.get("git", {})),
            complete=bool(data.get("complete", True)),
            verified_block=data.get("verified_block"),
            updated_at=str(data.get("updated_at", "")),
            # Records written before the token table have none: readers fall back to
            # the chain (the marketplace's tokens()) for them.
            tokens=[TokenRecord(**t) for t in data.get("tokens", [])],
        )


def deployments_dir(override: str | Path | None = None) -> Path:
    """The deployments directory: `override`, else $FABSTIR_DEPLOYMENTS_DIR, else deployments/."""
    if override is not None:
        return Path(override)
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else DEFAULT_DIR


def deployment_path(chain_id: int, dir: str | Path | None = None) -> Path:
    return deployments_dir(dir) / f"{chain_id}.json"


def read_deployment(chain_id: int, dir: str | Path | None = None) -> Deployment | None:
    """The recorded deployment on `chain_id`, complete or not; None when there is none."""
    path = deployment_path(chain_id, dir)
    if not path.is_file():
        return None
    return Deployment.from_dict(json.loads(path.read_text()))


def load_deployment(chain_id: int, dir: str | Path | None = None) -> Deployment:
    """The finished deployment on `chain_id` (what the SDK and the CLI use)."""
    path = deployment_path(chain_id, dir)
    if not path.is_file():
        raise DeploymentError(
            f"no deployment for chain {chain_id} at {path}; run `ape run deploy` (or set {ENV_DIR})"
        )
    deployment = Deployment.from_dict(json.loads(path.read_text()))
    if not deployment.complete:
        raise DeploymentError(f"{path} records an unfinished deploy; re-run `ape run deploy`")
    return deployment


def write_deployment(deployment: Deployment, dir: str | Path | None = None) -> Path:
    """Write deployments/<chainId>.json atomically (temp file, fsync, rename)."""
    deployment.updated_at = datetime.now(UTC).isoformat(timespec="seconds")
    path = deployment_path(deployment.chain_id, dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(deployment.to_dict(), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def archive_deployment(chain_id: int, dir: str | Path | None = None) -> Path | None:
    """Copy the current file to archive/<chainId>-<firstBlock>.json before it is replaced."""
    current = read_deployment(chain_id, dir)
    if current is None:
        return None
    target = deployments_dir(dir) / "archive" / f"{chain_id}-{current.first_block}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(deployment_path(chain_id, dir).read_text())
    return target


def compiler_settings(config_path: Path = REPO_ROOT / "ape-config.yaml") -> dict[str, Any]:
    """solc version, EVM version and optimizer settings, as ape-config.yaml sets them."""
    import yaml

    solidity = (yaml.safe_load(config_path.read_text()) or {}).get("solidity", {})
    return {
        "solc_version": str(solidity.get("version", "")),
        "evm_version": solidity.get("evm_version"),
        "optimizer": bool(solidity.get("optimizer", True)),
        "optimizer_runs": solidity.get("optimization_runs"),
        "via_ir": bool(solidity.get("via_ir", False)),
    }


def git_info(root: Path = REPO_ROOT) -> dict[str, Any]:
    """The commit deployed and whether the tree had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "contracts"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "contracts_dirty": None}
    return {"commit": commit, "contracts_dirty": dirty}
