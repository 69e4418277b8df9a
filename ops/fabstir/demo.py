"""The main job: one complete paid session on an embedded local chain, for real.

anvil -> deploy and wire -> seed (model approved, tokens minted) -> host registers
and serves the bundled model -> client deposits 1.0 USDC and opens a session -> a
multi-turn chat streamed as it is generated, receipts signed as tokens arrive ->
conversation stored encrypted -> close and settlement -> host and treasury withdraw
-> the books, checked to the unit.

Everything it starts is stopped at the end, on failure and on Ctrl-C too.
`fabstir demo` (ops/fabstir/cli/demo.py) and bench/demo.py drive `run_demo`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fabstir import models
from fabstir.chain.books import VaultBooks
from fabstir.chain.local import LocalChain, test_private_key

#: Standard test accounts the demo plays: 0 deploys and is treasurer, 1 hosts, 2 pays.
DEPLOYER, HOST, CLIENT = 0, 1, 2
DEFAULT_PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Name one famous museum in that city.",
)
DEPOSIT = "1.0"
PRICE_PER_TOKEN = 200  # 0.0002 USDC per generated token
PROOF_INTERVAL = 100
MAX_TOKENS_PER_ANSWER = 96

#: Set FABSTIR_DEMO_FAIL_AT=<phase> to fail on purpose when that phase starts
#: (the tests use it to check the clean-up).
FAIL_AT_ENV = "FABSTIR_DEMO_FAIL_AT"


class DemoError(Exception):
    """A phase failed; the message says which and why."""


class DemoUI(Protocol):
    """Where the demo reports progress (the CLI prints; tests and benches collect)."""

    def phase(self, name: str, description: str) -> contextlib.AbstractContextManager[None]: ...

    def info(self, text: str) -> None: ...

    def user(self, text: str) -> None: ...

    def token(self, text: str) -> None: ...

    def answer_done(self) -> None: ...


class QuietUI:
    """A DemoUI that prints nothing."""

    @contextlib.contextmanager
    def phase(self, name: str, description: str) -> Iterator[None]:
        yield

    def info(self, text: str) -> None:
        pass

    def user(self, text: str) -> None:
        pass

    def token(self, text: str) -> None:
        pass

    def answer_done(self) -> None:
        pass


@dataclass
class DemoOptions:
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    model: str | None = None
    keep_running: bool = False
    max_tokens: int = MAX_TOKENS_PER_ANSWER
    #: Where chain, deployment and storage live (None: a temporary directory).
    workdir: Path | None = None


@dataclass
class Tx:
    step: str
    tx_hash: str
    gas_used: int


@dataclass
class DemoReport:
    chain_id: int = 0
    rpc_url: str = ""
    host_url: str = ""
    model_id: str = ""
    session_id: int = 0
    answers: list[str] = field(default_factory=list)
    tokens_used: int = 0
    tokens_streamed: int = 0
    stream_seconds: float = 0.0
    deposit: int = 0
    cost: int = 0
    host_amount: int = 0
    fee: int = 0
    refund: int = 0
    conversation_cid: str | None = None
    transactions: list[Tx] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    books: dict[str, Any] = field(default_factory=dict)
    books_balance: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_streamed / self.stream_seconds if self.stream_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokens_per_second"] = round(self.tokens_per_second, 2)
        return data


class _Phases:
    """Times each phase and lets a test fail one on purpose."""

    def __init__(self, ui: DemoUI, report: DemoReport) -> None:
        self.ui = ui
        self.report = report
        self.fail_at = os.environ.get(FAIL_AT_ENV)

    @contextlib.contextmanager
    def __call__(self, name: str, description: str) -> Iterator[None]:
        start = time.perf_counter()
        with self.ui.phase(name, description):
            if self.fail_at == name:
                raise DemoError(f"{name}: failing on purpose ({FAIL_AT_ENV}={name})")
            yield
        self.report.phases[name] = round(time.perf_counter() - start, 3)


def deploy_and_seed(rpc_url: str, out_dir: Path) -> int:
    """Deploy, wire, verify and seed through ape, attached to our anvil. Returns the
    chain id. Runs before the event loop starts: ape is synchronous."""
    # ape-foundry attaches to a running anvil when this is set, instead of starting one.
    os.environ["APE_FOUNDRY_HOST"] = rpc_url
    previous = Path.cwd()
    os.chdir(models.REPO_ROOT)
    try:
        from ape import accounts, networks, project
        from ape.logging import LogLevel, logger

        # ape reports every transaction on stdout; the demo has its own progress.
        logger.set_level(LogLevel.ERROR)

        from fabstir.chain.deploy import deploy
        from fabstir.chain.deployments import load_deployment
        from fabstir.chain.params import load_params_file
        from fabstir.chain.seed import seed_local

        with networks.parse_network_choice("ethereum:local:foundry") as provider:
            test = accounts.test_accounts
            # deploy() verifies the wiring and raises unless it is exactly as configured.
            deploy(project, test[DEPLOYER], load_params_file("local"), out_dir=out_dir)
            chain_id = int(provider.chain_id)
            deployment = load_deployment(chain_id, out_dir)
            seed_local(
                project,
                deployment,
                [test[HOST], test[CLIENT]],
                funder=test[DEPLOYER],
                curator=test[DEPLOYER],
            )
            return chain_id
    finally:
        os.chdir(previous)


async def run_demo(options: DemoOptions, ui: DemoUI | None = None) -> DemoReport:
    """Run the whole lifecycle; see the module docstring."""
    ui = ui or QuietUI()
    report = DemoReport()
    phase = _Phases(ui, report)
    own_dir = options.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="fabstir-demo-")) if own_dir else options.workdir
    assert workdir is not None
    chain = LocalChain(workdir / "chain")
    stop_worker = asyncio.Event()
    worker_task: asyncio.Task[None] | None = None
    sdk_sessions: Any = None
    try:
        entry = models.find(options.model)
        report.model_id = entry.model_id
        with phase("model", f"checking the model file ({entry.file})"):
            path = models.local_path(entry)
            if not path.is_file():
                raise DemoError(
                    f"model: {path} is missing; run `make setup` or `fabstir models fetch`"
                )
            await asyncio.to_thread(models.verify_file, entry, path)

        with phase("chain", "starting a local chain (anvil)"):
            info = chain.up(persist=False)
            report.rpc_url = info.rpc_url
            ui.info(f"  anvil pid {info.pid} at {info.rpc_url} (chain id {info.chain_id})")

        with phase("deploy", "deploying, wiring and seeding the contracts"):
            report.chain_id = await asyncio.to_thread(
                deploy_and_seed, info.rpc_url, workdir / "deployments"
            )

        from fabstir.host.config import HostConfig
        from fabstir.host.worker import HostWorker, serve

        def sdk(index: int) -> Any:
            return sdk_for(index, info.rpc_url, report.chain_id, workdir)

        host_sdk, client_sdk, treasurer_sdk = sdk(HOST), sdk(CLIENT), sdk(DEPLOYER)
        port = _free_port()
        report.host_url = f"ws://127.0.0.1:{port}"

        with phase("register", "host stakes FAB and registers the model"):
            tx = await asyncio.to_thread(register_host, host_sdk, entry.model_id, report.host_url)
            _record(report, host_sdk, "host register (stake + models)", tx)

        with phase("serve", "host worker loads the model and starts serving"):
            ready: asyncio.Future[HostWorker] = asyncio.get_running_loop().create_future()
            config = HostConfig(
                rpc_url=info.rpc_url,
                private_key=test_private_key(HOST),
                chain_id=report.chain_id,
                deployments_dir=workdir / "deployments",
                model=options.model,
                port=port,
                public_url=report.host_url,
                db_path=workdir / "host.db",
                settlement_interval=1.0,
                # One session: nothing to gather into a batch, settle at once.
                settlement_coalesce=0.1,
            )
            worker_task = asyncio.create_task(
                serve(config, on_ready=ready.set_result, stop=stop_worker), name="host-worker"
            )
            waiting: list[asyncio.Future[Any]] = [ready, worker_task]
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if worker_task in done:
                worker_task.result()  # raises why it stopped
                raise DemoError("serve: the host worker stopped during start-up")

        payments = client_sdk.get_payment_manager()
        sessions = sdk_sessions = client_sdk.get_session_manager()
        with phase("session", f"client deposits {DEPOSIT} USDC and opens a session"):
            tx = await asyncio.to_thread(payments.deposit, DEPOSIT, "USDC")
            _record(report, client_sdk, f"client deposit {DEPOSIT} USDC", tx)
            started = await sessions.start_session(
                entry.model_id,
                _address(host_sdk),
                {
                    "deposit_amount": DEPOSIT,
                    "price_per_token": PRICE_PER_TOKEN,
                    "duration": 3600,
                    "proof_interval": PROOF_INTERVAL,
                },
            )
            report.session_id = started.session_id
            _record(report, client_sdk, "createSessionFromWallet", started.tx_hash)

        with phase("chat", "chatting (streamed, receipts signed as tokens arrive)"):
            for prompt in options.prompts:
                ui.user(prompt)
                parts: list[str] = []
                first = time.perf_counter()
                before = sessions.tokens_received(report.session_id)
                async for chunk in sessions.send_prompt_streaming(
                    report.session_id, prompt, max_tokens=options.max_tokens
                ):
                    ui.token(chunk.text)
                    parts.append(chunk.text)
                report.stream_seconds += time.perf_counter() - first
                report.tokens_streamed += sessions.tokens_received(report.session_id) - before
                ui.answer_done()
                report.answers.append("".join(parts))

        with phase("settle", "closing: receipts handed over, host settles on chain"):
            result = await sessions.complete_session(report.session_id)
            report.conversation_cid = result.conversation_cid
            if not result.settled_by_host:
                raise DemoError(f"settle: the host did not settle (status {result.status.name})")
            _record_settlement(report, client_sdk)

        with phase("withdraw", "host and treasury withdraw"):
            tx = await asyncio.to_thread(host_sdk.get_host_manager().withdraw_earnings, "USDC")
            _record(report, host_sdk, "host withdraws earnings", tx)
            treasury = treasurer_sdk.get_treasury_manager()
            fees = await asyncio.to_thread(treasury.get_treasury_balance, "USDC")
            tx = await asyncio.to_thread(treasury.withdraw_treasury_funds, "USDC", fees)
            _record(report, treasurer_sdk, "treasury withdraws fees", tx)

        with phase("books", "checking the books"):
            _check_books(report, client_sdk)

        if options.keep_running:
            ui.info(
                f"chain {report.rpc_url} (chain id {report.chain_id}), host {report.host_url}; "
                f"deployment in {workdir / 'deployments'}. Ctrl-C to stop."
            )
            await stop_worker.wait()
        return report
    finally:
        if sdk_sessions is not None:
            with contextlib.suppress(Exception):
                await sdk_sessions.close_all()
        stop_worker.set()
        if worker_task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(worker_task, 60)
        chain.down()
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def sdk_for(index: int, rpc_url: str, chain_id: int, workdir: Path) -> Any:
    """An SDK signing as test account `index`, on the demo's chain and deployment."""
    from fabstir.sdk.config import SDKConfig
    from fabstir.sdk.sdk import FabstirSDK

    sdk = FabstirSDK(
        SDKConfig(
            rpc_url=rpc_url,
            chain_id=chain_id,
            deployments_dir=workdir / "deployments",
            storage_url=str(workdir / f"storage-{index}"),
        )
    )
    sdk.authenticate(test_private_key(index))
    return sdk


def register_host(host_sdk: Any, model_id: str, url: str) -> str:
    """Stake FAB and register `url` serving `model_id` at the demo's USDC price."""
    tx: str = host_sdk.get_host_manager().register_host_with_models(
        {
            "metadata": {
                "hardware": {"gpu": "none (CPU)", "vram": 0, "ram": 0},
                "capabilities": ["chat", "streaming"],
                "location": "local",
                "max_concurrent": 8,
            },
            "supported_models": [model_id],
            "api_url": url,
            "min_prices": {"USDC": PRICE_PER_TOKEN},
        }
    )
    return tx


def _address(sdk: Any) -> str:
    address: str = sdk.address
    return address


def _free_port() -> int:
    from fabstir.chain.local import free_port

    return free_port()


def _record(report: DemoReport, sdk: Any, step: str, tx_hash: str) -> None:
    receipt = sdk.chain.w3.eth.get_transaction_receipt(tx_hash)
    report.transactions.append(Tx(step, tx_hash, int(receipt["gasUsed"])))


def _record_settlement(report: DemoReport, sdk: Any) -> None:
    from fabstir.chain.logscan import event_logs

    market = sdk.chain.contract("JobMarketplace")
    logs = event_logs(
        sdk.chain,
        market.events.SessionSettled(),
        from_block=sdk.start_block(),
        topics=["0x" + int(report.session_id).to_bytes(32, "big").hex()],
    )
    if len(logs) != 1:
        raise DemoError(f"settle: expected one SessionSettled event, found {len(logs)}")
    args = logs[0]["args"]
    report.tokens_used = int(args["tokensUsed"])
    report.host_amount = int(args["hostAmount"])
    report.fee = int(args["fee"])
    report.refund = int(args["refund"])
    report.cost = report.host_amount + report.fee
    info = sdk.get_session_job_manager().get_session(report.session_id)
    report.deposit = int(info.deposit_raw)
    _record(
        report,
        sdk,
        "settlement (host, settleBatch)",
        "0x" + logs[0]["transactionHash"].hex().removeprefix("0x"),
    )


def _check_books(report: DemoReport, sdk: Any) -> None:
    """Every unit accounted for: the split adds up to the escrow, the refund sits in
    the client's balance, and the vault holds what is still owed (plus any donation,
    reported as the surplus)."""
    usdc = sdk.get_token("USDC")
    market = sdk.chain.contract("JobMarketplace")
    earnings = sdk.chain.contract("HostEarnings")
    treasury = sdk.chain.contract("Treasury")
    client = sdk.address
    token = sdk.chain.contract("USDC", usdc.address)
    vault = int(sdk.chain.call(token.functions.balanceOf(market.address)))
    client_balance = int(sdk.chain.call(market.functions.balanceOf(client, usdc.address)))
    client_escrow = int(sdk.chain.call(market.functions.escrowedOf(client, usdc.address)))
    host = sdk.get_session_job_manager().get_session(report.session_id).host
    host_owed = int(sdk.chain.call(earnings.functions.balanceOf(host, usdc.address)))
    fees_owed = int(sdk.chain.call(treasury.functions.balanceOf(usdc.address)))
    books = VaultBooks(held=vault, owed=client_balance + client_escrow + host_owed + fees_owed)
    checks = {
        "split == tokens x price": report.cost == report.tokens_used * PRICE_PER_TOKEN,
        "host + fee + refund == escrow": report.host_amount + report.fee + report.refund
        == report.deposit,
        "fee == 10% of cost": report.fee == report.cost * 1000 // 10_000,
        "refund is in the client's balance": client_balance == report.refund,
        # >=, not ==: anyone may donate to the vault; the surplus is reported below.
        "vault covers balances + escrow + owed": books.balanced,
        "nothing left owed after withdrawals": host_owed == 0 and fees_owed == 0,
    }
    report.books = {
        "vault_usdc": vault,
        "client_balance": client_balance,
        "client_escrow": client_escrow,
        "host_owed": host_owed,
        "treasury_owed": fees_owed,
        "surplus": books.surplus,
        "checks": checks,
    }
    report.books_balance = all(checks.values())
    if not report.books_balance:
        failed = ", ".join(k for k, ok in checks.items() if not ok)
        raise DemoError(f"books: do not balance: {failed}")
