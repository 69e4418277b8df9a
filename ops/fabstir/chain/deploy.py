"""`deploy`: deploy, wire and configure from a params file, verify, record.

The one entry point behind `ape run deploy` (scripts/deploy.py) and the future
`fabstir deploy`. What it does on a chain:

- no deployments/<chainId>.json (or its contracts are not on this chain, e.g. a
  restarted anvil): deploy everything;
- a finished deployment: reuse it if every contract still has the code it was
  deployed with and `verify_system` passes with the current params, report "reused"
  and send nothing; otherwise refuse, listing why, unless `fresh`;
- an unfinished one (a deploy that was interrupted): keep what matches, deploy the rest;
- `fresh`: a new set (tokens configured by address in the params file are kept).

On live networks it prices every transaction first (EIP-1559, Base-friendly), shows
the cost, checks the balance and asks `confirm` before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from fabstir.chain.deployments import (
    ContractRecord,
    Deployment,
    archive_deployment,
    compiler_settings,
    deployment_path,
    git_info,
    read_deployment,
    write_deployment,
)
from fabstir.chain.params import DEPLOYER, DeployParams, ParamsFile
from fabstir.chain.system import (
    LEDGER_GROUP,
    MOCK_TOKEN_TYPE,
    Log,
    Roles,
    System,
    TxSender,
    address_of,
    attach_system,
    code_hash,
    contract_type,
    deploy_system,
    deployment_names,
    mock_token_name,
    token_records,
)
from fabstir.chain.verify import ExpectedWiring, VerifyReport, WiringError, verify_system

# OP-stack predeploy that prices the L1 data part of a Base transaction.
GAS_PRICE_ORACLE = "0x420000000000000000000000000000000000000F"
_GET_L1_FEE = "0x" + keccak(text="getL1Fee(bytes)")[:4].hex()

# Upper bounds for transactions that cannot be estimated before the contracts they
# touch exist. tests/deploy checks every real transaction stays under its estimate.
CALL_GAS_BOUND = {"grantRole": 80_000, "renounceRole": 60_000, "configureToken": 150_000}
# JobMarketplace's constructor reads the ledgers, so it cannot be estimated before
# they exist: creation costs plus a bound on the constructor's own work.
MARKETPLACE_CONSTRUCTOR_BOUND = 600_000


class DeployError(Exception):
    """The deploy refused to start, or finished without a verified deployment."""


class DeployAborted(DeployError):
    """The operator declined the cost shown; nothing was sent."""


@dataclass(frozen=True)
class PlannedTx:
    step: str
    gas: int
    # True: eth_estimateGas; False: an upper bound (CALL_GAS_BOUND and the like)
    estimated: bool
    data: bytes = b""
    l1_fee: int | None = None


@dataclass
class CostEstimate:
    txs: list[PlannedTx]
    base_fee: int
    priority_fee: int
    max_fee: int
    l1_fee_available: bool = False

    @property
    def total_gas(self) -> int:
        return sum(t.gas for t in self.txs)

    @property
    def l1_fees(self) -> int:
        return sum(t.l1_fee or 0 for t in self.txs)

    @property
    def expected_wei(self) -> int:
        return self.total_gas * (self.base_fee + self.priority_fee) + self.l1_fees

    @property
    def max_wei(self) -> int:
        return self.total_gas * self.max_fee + self.l1_fees

    def lines(self) -> list[str]:
        out = []
        for t in self.txs:
            kind = "est." if t.estimated else "max"
            wei = t.gas * self.max_fee + (t.l1_fee or 0)
            out.append(f"  {t.step:<64} gas {kind} {t.gas:>10,}  <= {_eth(wei)} ETH")
        out.append(
            f"  gas price: base fee {_gwei(self.base_fee)} gwei, priority {_gwei(self.priority_fee)} gwei,"
            f" max fee {_gwei(self.max_fee)} gwei"
        )
        if self.l1_fee_available:
            out.append(f"  L1 data fee (GasPriceOracle, approx.): {_eth(self.l1_fees)} ETH")
        else:
            out.append("  L1 data fee: no GasPriceOracle on this chain, not included")
        out.append(
            f"  total: {len(self.txs)} transactions, {self.total_gas:,} gas;"
            f" expected {_eth(self.expected_wei)} ETH, at most {_eth(self.max_wei)} ETH"
        )
        return out


@dataclass
class DeployResult:
    deployment: Deployment
    path: Path
    status: dict[str, str]
    report: VerifyReport
    transactions: list[Any] = field(default_factory=list)
    cost: CostEstimate | None = None

    @property
    def reused(self) -> bool:
        """Nothing was sent: the recorded deployment was verified and kept."""
        return not self.transactions and all(
            s in ("reused", "external") for s in self.status.values()
        )


def network_name(provider: Any) -> str:
    """ecosystem:network:provider, never the RPC URL (it may carry an API key)."""
    return f"{provider.network.ecosystem.name}:{provider.network.name}:{provider.name}"


def resolve_account(alias: str | None, live: bool) -> Any:
    """An ape account by alias (`ape accounts list`), TEST::<n> for a test account, or
    test account 0 on local networks when none is given. Keys never live in the repo."""
    from ape import accounts

    if alias is None:
        if live:
            raise DeployError(
                "--account ALIAS is required on a live network (import one with `ape accounts import`)"
            )
        return accounts.test_accounts[0]
    if alias.upper().startswith("TEST::"):
        return accounts.test_accounts[int(alias.split("::", 1)[1])]
    return accounts.load(alias)


def enable_autosign(account: Any) -> None:
    """Keyfile accounts: ask for the passphrase once (or take it from
    APE_ACCOUNTS_<alias>_PASSPHRASE) instead of a prompt per transaction."""
    if hasattr(account, "set_autosign"):
        account.set_autosign(True)


def _eth(wei: int) -> str:
    return f"{wei / 10**18:.8f}"


def _gwei(wei: int) -> str:
    return f"{wei / 10**9:.6f}".rstrip("0").rstrip(".")


def expected_wiring(pf: ParamsFile, chain_id: int, system: System, deployer: str) -> ExpectedWiring:
    return ExpectedWiring(
        params=pf.params,
        chain_id=chain_id,
        fab=address_of(system.fab),
        tokens=token_records(pf.params, system),
        roles=pf.roles.resolve(deployer),
    )


def configured_addresses(p: DeployParams) -> dict[str, str]:
    """Contracts the params name by address (never deployed here): FAB if given, and
    every token of the table that is neither the coin nor a mock."""
    configured = {"FABToken": p.fab_address} if p.fab_address else {}
    configured.update({t.symbol: t.address for t in p.erc20_tokens if t.external})
    return {name: str(a) for name, a in configured.items()}


def roles_for(pf: ParamsFile, deployer: str) -> Roles:
    r = pf.roles.resolve(deployer)
    return Roles(
        curator=r["curator"],
        slasher=r["slasher"],
        treasurer=r["treasurer"],
        pauser=r["pauser"],
        token_admin=r["token_admin"],
    )


# ----------------------------------------------------------------- reuse


def assess_existing(
    project: Any, existing: Deployment, pf: ParamsFile, provider: Any
) -> tuple[dict[str, tuple[Any, ContractRecord]], list[str], bool]:
    """Which recorded contracts can be kept: (reusable, reasons the rest cannot, any
    recorded contract has code on this chain)."""
    p = pf.params
    web3 = provider.web3
    reuse: dict[str, tuple[Any, ContractRecord]] = {}
    reasons: list[str] = []
    any_code = False
    configured = configured_addresses(p)
    mocks = {t.symbol: t for t in p.erc20_tokens if t.mock}
    for name in deployment_names(p):
        rec = existing.contracts.get(name)
        if configured.get(name):
            if rec is not None and rec.address.lower() != str(configured[name]).lower():
                reasons.append(f"{name}: recorded {rec.address}, params name {configured[name]}")
            continue
        if rec is None:
            reasons.append(f"{name}: not recorded")
            continue
        if rec.external:
            reasons.append(f"{name}: recorded as external {rec.address}, params deploy a new one")
            continue
        if len(web3.eth.get_code(rec.address)) == 0:
            reasons.append(f"{name}: no code at {rec.address}")
            continue
        any_code = True
        container = getattr(project, contract_type(name))
        if rec.code_hash != code_hash(container):
            reasons.append(f"{name}: the contract's code changed since {rec.address} was deployed")
            continue
        instance = container.at(rec.address)
        # A mock's symbol and decimals are constructor arguments, outside the code hash.
        if name in mocks and (instance.symbol(), instance.decimals()) != (
            name,
            mocks[name].decimals,
        ):
            reasons.append(
                f"{name}: the mock at {rec.address} is {instance.symbol()} with"
                f" {instance.decimals()} decimals; the params want {mocks[name].decimals}"
            )
            continue
        reuse[name] = (instance, rec)

    def final(name: str) -> str | None:
        if configured.get(name):
            return to_checksum_address(str(configured[name]))
        return reuse[name][1].address if name in reuse else None

    def drop(name: str, why: str) -> None:
        if name in reuse:
            del reuse[name]
            reasons.append(f"{name}: {why}")

    if "NodeRegistry" in reuse:
        nodes = reuse["NodeRegistry"][0]
        for what, actual, want in (
            ("FABToken", nodes.fabToken(), final("FABToken")),
            ("ModelRegistry", nodes.modelRegistry(), final("ModelRegistry")),
            ("minStake", nodes.minStake(), p.min_stake),
            ("unbondingPeriod", nodes.unbondingPeriod(), p.unbonding_period),
            ("maxSlashBps", nodes.maxSlashBps(), p.max_slash_bps),
        ):
            if want is None or str(actual).lower() != str(want).lower():
                drop("NodeRegistry", f"{what} is {actual}, needs {want}")
                break
    if all(n in reuse for n in LEDGER_GROUP):
        mkt = reuse["JobMarketplace"][0]
        for what, actual, want in (
            ("nodeRegistry", mkt.nodeRegistry(), final("NodeRegistry")),
            ("proofSystem", mkt.proofSystem(), final("ProofSystem")),
            ("hostEarnings", mkt.hostEarnings(), final("HostEarnings")),
            ("treasury", mkt.treasury(), final("Treasury")),
            ("feeBps", mkt.feeBps(), p.fee_bps),
            ("settlementWindow", mkt.settlementWindow(), p.settlement_window),
        ):
            if want is None or str(actual).lower() != str(want).lower():
                for n in LEDGER_GROUP:
                    drop(n, f"JobMarketplace.{what} is {actual}, needs {want}")
                break
    else:
        for n in LEDGER_GROUP:
            drop(n, "HostEarnings, Treasury and JobMarketplace are kept together or not at all")
    return reuse, reasons, any_code


# ------------------------------------------------------------------ cost


def estimate_cost(
    project: Any,
    deployer: Any,
    pf: ParamsFile,
    reuse: dict[str, tuple[Any, ContractRecord]],
    gas_price: tuple[int, int, int] | None = None,
) -> CostEstimate:
    """Every transaction the deploy will send, with its gas: eth_estimateGas where the
    transaction does not depend on an earlier one, an upper bound where it does."""
    provider = deployer.provider
    web3 = provider.web3
    p = pf.params
    me = address_of(deployer)
    roles = pf.roles.resolve(me)
    nonce = int(deployer.nonce)
    txs: list[PlannedTx] = []
    predicted: dict[str, str] = {}
    configured = configured_addresses(p)
    names = deployment_names(p)

    def addr(name: str) -> str:
        if configured.get(name):
            return to_checksum_address(str(configured[name]))
        if name in reuse:
            return reuse[name][1].address
        return predicted[name]

    to_deploy = [n for n in names if not configured.get(n) and n not in reuse]
    if any(n in to_deploy for n in LEDGER_GROUP):
        to_deploy = [n for n in to_deploy if n not in LEDGER_GROUP] + list(LEDGER_GROUP)
    for i, name in enumerate(to_deploy):
        predicted[name] = to_checksum_address(deployer.get_deployment_address(nonce + i))
    args: dict[str, tuple[Any, ...]] = {
        "FABToken": (me, p.fab_supply),
        "ModelRegistry": (me,),
        "ProofSystem": (),
    }
    for spec in p.erc20_tokens:
        if spec.mock:
            args[spec.symbol] = (mock_token_name(spec.symbol), spec.symbol, spec.decimals)
    if "NodeRegistry" in to_deploy:
        args["NodeRegistry"] = (
            me, addr("FABToken"), addr("ModelRegistry"), p.min_stake, p.unbonding_period, p.max_slash_bps,
        )  # fmt: skip
    if "JobMarketplace" in to_deploy:
        mkt = predicted["JobMarketplace"]
        args["HostEarnings"] = (mkt,)
        args["Treasury"] = (me, mkt)
        args["JobMarketplace"] = (
            me, addr("NodeRegistry"), addr("ProofSystem"), predicted["HostEarnings"], predicted["Treasury"],
            p.fee_bps, p.settlement_window, p.native_token.min_deposit,
        )  # fmt: skip
    for name in to_deploy:
        container = getattr(project, contract_type(name))
        initcode = bytes.fromhex(container.contract_type.deployment_bytecode.bytecode[2:])
        data = initcode + bytes(container.constructor.encode_input(*args[name]))
        if name == "JobMarketplace":
            runtime = container.contract_type.runtime_bytecode.bytecode or "0x"
            calldata = sum(16 if b else 4 for b in data)
            gas = 53_000 + calldata + 200 * (len(runtime) // 2 - 1) + MARKETPLACE_CONSTRUCTOR_BOUND
            txs.append(PlannedTx(f"deploy {name}", gas, False, data))
        else:
            gas = int(web3.eth.estimate_gas({"from": me, "data": "0x" + data.hex()}))
            txs.append(PlannedTx(f"deploy {name}", gas, True, data))
    # Wiring: an upper bound that assumes none of it is on chain yet.
    calls = [
        ("ModelRegistry.grantRole(CURATOR_ROLE)", "grantRole"),
        ("NodeRegistry.grantRole(MARKETPLACE_ROLE)", "grantRole"),
        ("NodeRegistry.grantRole(SLASHER_ROLE)", "grantRole"),
        ("Treasury.grantRole(TREASURER_ROLE)", "grantRole"),
        *((f"JobMarketplace.configureToken({s.symbol})", "configureToken") for s in p.erc20_tokens),
    ]
    for role in ("pauser", "token_admin"):
        if roles[role] != me:
            calls.append((f"JobMarketplace.grantRole({role.upper()}_ROLE)", "grantRole"))
            calls.append((f"JobMarketplace.renounceRole({role.upper()}_ROLE)", "renounceRole"))
    for step, fn in calls:
        txs.append(PlannedTx(step, CALL_GAS_BOUND[fn], False, b"\x00" * 100))

    base, priority, max_fee = gas_price or (0, 0, 0)
    est = CostEstimate(txs, base, priority, max_fee)
    if len(web3.eth.get_code(GAS_PRICE_ORACLE)) > 0:
        est.l1_fee_available = True
        from eth_abi.abi import encode as abi_encode

        priced = []
        for t in txs:
            raw = web3.eth.call(
                {
                    "to": GAS_PRICE_ORACLE,
                    "data": _GET_L1_FEE + abi_encode(["bytes"], [t.data]).hex(),
                }
            )
            priced.append(
                PlannedTx(t.step, t.gas, t.estimated, t.data, int.from_bytes(bytes(raw), "big"))
            )
        est.txs = priced
    return est


def live_gas_price(provider: Any, pf: ParamsFile) -> tuple[int, int, int]:
    """(base fee, priority fee, max fee) for live transactions, from the params' gas settings."""
    base = int(provider.base_fee)
    priority = pf.gas.max_priority_fee_wei
    max_fee = base * pf.gas.base_fee_multiplier + priority
    if max_fee > pf.gas.max_fee_cap_wei:
        raise DeployError(
            f"max fee {_gwei(max_fee)} gwei is above the params cap {_gwei(pf.gas.max_fee_cap_wei)} gwei"
            " (gas.max_fee_cap_wei); wait for the base fee to fall or raise the cap"
        )
    return base, priority, max_fee


# ---------------------------------------------------------------- deploy


def deploy(
    project: Any,
    deployer: Any,
    pf: ParamsFile,
    *,
    out_dir: str | Path | None = None,
    fresh: bool = False,
    live: bool | None = None,
    confirm: Callable[[CostEstimate], bool] | None = None,
    log: Log | None = None,
) -> DeployResult:
    """Deploy (or reuse) the system described by `pf` and verify it; see module doc.

    `confirm` is asked on live networks, with the cost, before anything is sent (None:
    go ahead). `out_dir` overrides where deployments/<chainId>.json is read and written.
    """
    say = log or (lambda _msg: None)
    provider = deployer.provider
    chain_id = int(provider.chain_id)
    me = address_of(deployer)
    p = pf.params
    if live is None:
        live = not provider.network.is_local
    if pf.chain_id != chain_id:
        raise DeployError(
            f"params {pf.name!r} are for chain {pf.chain_id}, connected to chain {chain_id}"
        )
    mocks = [t.symbol for t in p.erc20_tokens if t.mock]
    if live and mocks:
        raise DeployError(
            f"live network: the params must name the address of {', '.join(mocks)}"
            " (a 'mock' token is for local chains)"
        )
    expected_decimals = {t.symbol: t.decimals for t in p.erc20_tokens}
    expected_decimals["FABToken"] = 18
    for what, address in configured_addresses(p).items():
        if len(provider.web3.eth.get_code(to_checksum_address(address))) == 0:
            raise DeployError(f"configured {what} {address} has no code on chain {chain_id}")
        # Any ERC-20 ABI reads decimals(); MockERC20's is one.
        token = getattr(project, MOCK_TOKEN_TYPE).at(address)
        if token.decimals() != expected_decimals[what]:
            raise DeployError(
                f"configured {what} {address} has {token.decimals()} decimals,"
                f" not {expected_decimals[what]}"
            )

    existing = None if fresh else read_deployment(chain_id, out_dir)
    reuse: dict[str, tuple[Any, ContractRecord]] = {}
    prior_txs: list[Any] = []
    replacing = deployment_path(chain_id, out_dir).is_file()
    if existing is not None:
        reuse, reasons, any_code = assess_existing(project, existing, pf, provider)
        if not any_code:
            say(
                f"recorded deployment for chain {chain_id} is not on this chain (reset?): deploying new"
            )
            existing, reuse, reasons = None, {}, []
        elif existing.complete:
            if reasons:
                raise DeployError(
                    "the recorded deployment does not match the params and contracts:\n"
                    + "\n".join(f"  - {r}" for r in reasons)
                    + "\npass --fresh to deploy a new set (see docs/runbooks/deploy.md, rolling out)"
                )
            system = attach_system(project, existing.addresses)
            try:
                report = verify_system(
                    system.as_dict(),
                    expected_wiring(pf, chain_id, system, existing.deployer),
                    from_block=existing.first_block,
                )
            except WiringError as err:
                raise DeployError(
                    f"the recorded deployment fails the wiring check; nothing was sent.\n{err}\n"
                    "fix the roles on chain (or the params file), or pass --fresh"
                ) from err
            status = {
                n: ("external" if existing.contracts[n].external else "reused")
                for n in deployment_names(p)
            }
            for n in status:
                say(f"  {status[n]:<8} {n:<15} {existing.contracts[n].address}")
            path = deployment_path(chain_id, out_dir)
            tokens = token_records(p, system)
            if existing.tokens != tokens:
                # A record written before the token table: add it (nothing is sent).
                existing.tokens = tokens
                path = write_deployment(existing, out_dir)
            return DeployResult(existing, path, status, report)
        else:
            if address_of(existing.deployer) != me:
                raise DeployError(
                    f"an unfinished deploy by {existing.deployer} is recorded; resume it with that"
                    " account or pass --fresh"
                )
            prior_txs = list(existing.transactions)
            say(f"resuming an unfinished deploy: keeping {', '.join(reuse) or 'nothing'}")

    if pf.roles.admin != DEPLOYER and address_of(pf.roles.resolve(me)["admin"]) != me:
        raise DeployError(
            "a new deployment starts with the deployer as admin: set roles.admin to 'deployer'"
            " and rotate afterwards with `ape run roles` (docs/runbooks/deploy.md)"
        )

    tx_kwargs: dict[str, Any] = {}
    cost = None
    if live:
        gas_price = live_gas_price(provider, pf)
        cost = estimate_cost(project, deployer, pf, reuse, gas_price)
        say(f"deploy plan on chain {chain_id} ({network_name(provider)}) from {me}:")
        for name, (_, rec) in reuse.items():
            say(f"  reuse  {name:<15} {rec.address}")
        for line in cost.lines():
            say(line)
        balance = int(provider.get_balance(me))
        say(f"  deployer balance: {_eth(balance)} ETH")
        if balance < cost.max_wei:
            raise DeployError(
                f"{me} holds {_eth(balance)} ETH, the deploy may need up to {_eth(cost.max_wei)}"
            )
        if confirm is not None and not confirm(cost):
            raise DeployAborted("aborted by the operator; nothing was sent")
        tx_kwargs = {
            "max_fee": gas_price[2],
            "max_priority_fee": gas_price[1],
            "required_confirmations": pf.gas.confirmations,
        }

    if replacing and existing is None:
        archived = archive_deployment(chain_id, out_dir)
        if archived is not None:
            say(f"previous deployment file kept as {archived}")

    base = Deployment(
        chain_id=chain_id,
        network=network_name(provider),
        deployer=me,
        contracts={},
        params=p.to_dict(),
        roles=pf.roles.resolve(me),
        params_name=pf.name,
        transactions=prior_txs,
        compiler=compiler_settings(),
        git=git_info(),
        complete=False,
    )
    partial: dict[str, ContractRecord] = {n: rec for n, (_, rec) in reuse.items()}
    sender = TxSender(deployer, tx_kwargs, say)

    def record(name: str, rec: ContractRecord) -> None:
        partial[name] = rec
        base.contracts = dict(partial)
        base.transactions = prior_txs + sender.transactions
        write_deployment(base, out_dir)

    sender.on_deployed = record
    system = deploy_system(project, deployer, p, roles_for(pf, me), sender=sender, reuse=reuse)
    base.contracts = dict(system.records)
    base.tokens = token_records(p, system)
    base.transactions = prior_txs + sender.transactions
    path = write_deployment(base, out_dir)
    try:
        report = verify_system(
            system.as_dict(), expected_wiring(pf, chain_id, system, me), from_block=base.first_block
        )
    except WiringError as err:
        raise DeployError(
            f"deployed, but the wiring check failed; {path} stays unfinished.\n{err}"
        ) from err
    base.complete = True
    base.verified_block = report.block
    path = write_deployment(base, out_dir)
    for n in system.records:
        say(f"  {system.status[n]:<8} {n:<15} {system.records[n].address}")
    return DeployResult(base, path, dict(system.status), report, list(sender.transactions), cost)


def verify_recorded(project: Any, deployment: Deployment, pf: ParamsFile) -> VerifyReport:
    """Verify a recorded deployment against a params file (read-only)."""
    system = attach_system(project, deployment.addresses)
    return verify_system(
        system.as_dict(),
        expected_wiring(pf, deployment.chain_id, system, deployment.deployer),
        from_block=deployment.first_block,
    )
