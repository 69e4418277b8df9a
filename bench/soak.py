"""The whole market under load and faults (issue 15): nothing may be lost.

    python bench/soak.py [--duration S] [--seed N] [--sdk-clients N] [--gateway-clients N]
                         [--short] [--out FILE]   # table on stdout, bench/results/soak.json

`--short` is the CI version (tests/soak, ~60-70 s in all with 30 s of load): every
fault kind once in the first half of the load, the RPC outage 5 s instead of 10 s, a
client waits 10 s (not 30 s) for its host's settlement before it requests the close
on chain itself, and time is moved past the sessions' end at once after the load
instead of first waiting for the hosts. The checks are the same.

One anvil mining a block every second; the contracts deployed and seeded by the
project's own deploy; three host workers as separate processes at different prices
(two llama.cpp in process, one in front of `python -m llama_cpp.server`), all reaching
the chain through the fault-injecting JSON-RPC proxy (tests/support/rpc_proxy.py).
Clients for `--duration` seconds: SDK sessions (multi-turn, some paused and resumed,
USDC and ETH, each client its own wallet) and `openai` clients through one
`fabstir gateway`. Faults at seeded random times: a worker `kill -9`ed and restarted,
a 10 s RPC outage, clients vanishing mid-stream, clients closing on chain without
telling the host, a host unregistering with open sessions, an anvil reorg, the
upstream server restarted.

Then every session is brought to an end (hosts settle; what is left is finalized
after moving time past the settlement window), every party withdraws, and the run
checks the money per session (SDK sessions from what the clients saw, gateway sessions
from the gateway's ledger, reorged-away sessions: nothing paid, a clear error), per
client and per token; see `check` and `_check_*` below. Exit
status 0 only when every check holds. Every process it starts is stopped at the end,
also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from web3.logs import DISCARD

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from _common import machine, save, table  # noqa: E402
from rpc_proxy import FaultProxy  # noqa: E402

from fabstir import models  # noqa: E402
from fabstir.chain.books import VaultBooks  # noqa: E402
from fabstir.chain.local import LocalChain, free_port, test_private_key  # noqa: E402
from fabstir.demo import DEPLOYER, deploy_and_seed, sdk_for  # noqa: E402

FABSTIR = str(Path(sys.executable).parent / "fabstir")
ALIAS = "smollm2-upstream"
FAULT_KINDS = (
    "worker_kill",
    "rpc_outage",
    "client_vanish",
    "client_close_on_chain",
    "host_unregister",
    "reorg",
    "upstream_restart",
)
#: Test accounts: 0 deploys (treasurer), hosts below, the gateway's wallet, then clients.
HOSTS = (1, 3, 4)
GATEWAY_ACCOUNT = 5
FIRST_CLIENT = 10
SETTLEMENT_WINDOW = 3600  # deployments/params/local.json
SESSION_DURATION = 3600
REORG_DEPTH = 2
PIDS_FILE = "pids"  # in the workdir: every child process's pid (anvil's is in chain/)
PROMPTS = (
    "What is the capital of France?",
    "Name a colour of the sky.",
    "Count from one to five.",
    "Say something about the sea.",
    "What is two plus two?",
    "Name a fruit that is yellow.",
)
REQUEST_TIMEOUT = 180.0  # a request that takes longer is a hang: a failed check


@dataclass
class HostSpec:
    account: int
    usdc_price: int
    eth_price: int
    upstream: bool
    port: int = 0
    url: str = ""
    address: str = ""


@dataclass
class ClientSession:
    """What one SDK client knows of a session it opened."""

    session_id: int
    depositor: str
    token: str
    signed: int = 0  # tokens_used of the newest receipt it signed
    acked: int = 0  # the newest receipt the host acknowledged
    ending: str = "completed"  # completed | vanished | closed_on_chain | failed | failed_start
    lag_s: float | None = None
    codes: list[str] = field(default_factory=list)  # every error code it met
    # The creating transaction: after a reorg the same id can name another session
    # (even the same client's next one), so the id alone does not identify it.
    tx_hash: str | None = None


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)  # "ok" or an error code
    first_token_s: list[float] = field(default_factory=list)
    tokens: int = 0
    sessions: list[ClientSession] = field(default_factory=list)
    unclear: list[str] = field(default_factory=list)  # requests without a clear outcome
    examples: dict[str, str] = field(default_factory=dict)  # error code -> one message
    ok_times: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def outcome(self, code: str, message: str = "") -> None:
        with self.lock:
            self.requests[code] += 1
            if code != "ok" and message:
                self.examples.setdefault(code, message[:300])
            if code == "ok":
                self.ok_times.append(time.monotonic())


@dataclass
class Fault:
    at: float  # seconds into the load phase
    kind: str
    detail: str = ""
    done: bool = False
    error: str | None = None
    at_monotonic: float = 0.0


def fault_schedule(seed: int, duration: float, *, short: bool = False) -> list[Fault]:
    """Every kind at least once, more in a long run (one per kind per ~5 minutes),
    at seeded random times between 10% and 80% of the load phase, at least 4 s apart.
    Short: every kind once, from 2 s to half the load phase, so the load after the
    last one shows the market recovered (faults never overlap: each waits for the one
    before it to end)."""
    rng = random.Random(seed)
    if short:
        kinds = list(FAULT_KINDS)
        rng.shuffle(kinds)
        lo, slot = 2.0, max(0.5 * duration - 2.0, 0.0) / len(kinds)
        return [
            Fault(round(lo + i * slot + rng.uniform(0, slot / 2), 1), kind)
            for i, kind in enumerate(kinds)
        ]
    rounds = max(1, int(duration // 300))
    kinds = [k for _ in range(rounds) for k in FAULT_KINDS]
    # A host leaves once: after that it has no new sessions to lose.
    kinds = [k for i, k in enumerate(kinds) if k != "host_unregister" or i < len(FAULT_KINDS)]
    lo, hi = 0.1 * duration, 0.8 * duration
    slot = (hi - lo) / len(kinds)
    rng.shuffle(kinds)
    return [
        Fault(round(lo + i * slot + rng.uniform(0, max(slot - 4.0, 0.0)), 1), kind)
        for i, kind in enumerate(kinds)
    ]


def reorged_away(rec: ClientSession, depositor: str, created_tx: str | None) -> bool:
    """Whether the chain's session with `rec`'s id is not the one this client opened:
    a reorg removed its creation, and the id may since name another client's session
    or this client's next one. `created_tx` is the transaction of the chain's
    SessionCreated for that id; an orphan of a failed start recorded none."""
    if depositor.lower() != rec.depositor.lower():
        return True
    if rec.tx_hash is None:
        return False
    if created_tx is None:
        return True
    return rec.tx_hash.lower().removeprefix("0x") != created_tx.lower().removeprefix("0x")


def _rpc(url: str, method: str, params: list[Any]) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer.get("result")


def _listening(port: int) -> bool:
    import socket

    with contextlib.closing(socket.socket()) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


class Process:
    """One child process (its own process group) that can be killed and restarted."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None):
        self.name, self.cmd, self.log, self.env = name, cmd, log, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.exits: list[int] = []  # return codes of earlier incarnations
        self.kills = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True,
            )  # fmt: skip
        # Every child's pid, so a caller that had to SIGKILL this run can still stop them.
        with (self.log.parent / PIDS_FILE).open("a") as pids:
            pids.write(f"{self.proc.pid}\n")

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.exits.append(self.proc.wait(30))
        self.kills += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL; the exit status of this incarnation."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        return self.proc.returncode

    def wait_port(self, port: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not _listening(port):
            if not self.alive():
                raise RuntimeError(f"{self.name} exited at start; see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not open port {port}; see {self.log}")
            time.sleep(0.2)


@dataclass
class SoakOptions:
    duration: float = 1800.0
    seed: int = 15
    sdk_clients: int = 24
    gateway_clients: int = 8
    max_tokens: int = 24
    workdir: Path | None = None
    out: Path | None = None
    #: CI's short run: compressed fault schedule, a 5 s RPC outage instead of 10 s,
    #: and time moved forward at once after the load instead of waiting for hosts.
    short: bool = False

    @property
    def outage_s(self) -> float:
        return 5.0 if self.short else 10.0

    @property
    def settle_timeout(self) -> float:
        """How long an SDK client waits for its host's settlement before it requests
        the close on chain itself (short: 10 s, so the slowest one does not hold up
        the end of the load)."""
        return 10.0 if self.short else 30.0


class Soak:
    def __init__(self, opts: SoakOptions) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.own_dir = opts.workdir is None
        self.workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="fabstir-soak-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.chain = LocalChain(self.workdir / "chain")
        self.proxy: FaultProxy | None = None
        self.procs: dict[str, Process] = {}
        self.hosts = [
            HostSpec(HOSTS[0], 200, 1_000_000_000, upstream=False),
            HostSpec(HOSTS[1], 300, 1_500_000_000, upstream=False),
            HostSpec(HOSTS[2], 250, 1_200_000_000, upstream=True),
        ]
        self.stats = Stats()
        self.faults = fault_schedule(opts.seed, opts.duration, short=opts.short)
        self.phases: dict[str, float] = {}  # finer timings than run_soak's
        self.vanish_requests: list[asyncio.Event] = []
        self.close_requests: list[asyncio.Event] = []
        self.unregistered: set[str] = set()
        self.checks: dict[str, bool] = {}
        self.problems: list[str] = []
        self.figures: dict[str, Any] = {}

    # ------------------------------------------------------------------ set-up

    def _mark(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.phases[name] = round(now - since, 1)
        return now

    def up(self) -> None:
        t = time.monotonic()
        info = self.chain.up(persist=False)
        self.anvil = info.rpc_url
        # The upstream server needs no chain: it loads its model while the deploy runs.
        self.entry = models.find()
        self._spawn_upstream()
        t = self._mark("setup.anvil", t)
        self.chain_id = deploy_and_seed(info.rpc_url, self.workdir / "deployments")
        self.deployments = self.workdir / "deployments"
        t = self._mark("setup.deploy", t)
        self.start_block = int(_rpc(self.anvil, "eth_blockNumber", []), 16)
        self.proxy = FaultProxy(self.anvil, seed=self.opts.seed).start()
        # Clients that give up on a hung call reset the connection: not worth a traceback.
        assert self.proxy._server is not None
        self.proxy._server.handle_error = lambda *_: None  # type: ignore[method-assign]
        self.rpc = self.proxy.url
        self.admin = sdk_for(DEPLOYER, self.anvil, self.chain_id, self.workdir)
        self.model_name = f"{self.entry.repo}/{self.entry.file}"
        self._fund()
        for h in self.hosts:
            h.port = free_port()
            h.url = f"ws://127.0.0.1:{h.port}"
            sdk = sdk_for(h.account, self.anvil, self.chain_id, self.workdir)
            h.address = str(sdk.address)
            sdk.get_host_manager().register_host_with_models(
                {
                    "metadata": {
                        "hardware": {"gpu": "none (CPU)", "vram": 0, "ram": 0},
                        "capabilities": ["chat", "streaming"],
                        "location": "local",
                        "max_concurrent": 16,
                    },
                    "supported_models": [self.entry.model_id],
                    "api_url": h.url,
                    "min_prices": {"USDC": h.usdc_price, "ETH": h.eth_price},
                }
            )
        t = self._mark("setup.fund_and_register", t)
        self._wait_upstream()
        t = self._mark("setup.upstream_ready", t)
        for h in self.hosts:
            self._start_worker(h)
        for h in self.hosts:
            self.procs[f"worker-{h.account}"].wait_port(h.port)
        t = self._mark("setup.workers", t)
        self._start_gateway()
        self._mark("setup.gateway", t)
        # From here on blocks come once a second, as on a live chain.
        _rpc(self.anvil, "evm_setAutomine", [False])
        _rpc(self.anvil, "evm_setIntervalMining", [1])

    def _fund(self) -> None:
        """ETH for gas and deposits, USDC minted (MockERC20.mint is open on local chains)."""
        usdc = self.admin.get_token("USDC")
        token = self.admin.chain.contract("USDC", usdc.address)
        w3 = self.admin.chain.w3
        for index in [GATEWAY_ACCOUNT, *self._client_accounts()]:
            who = _address_of(index)
            _rpc(self.anvil, "anvil_setBalance", [who, hex(1000 * 10**18)])
            # anvil's account 0 is unlocked: it signs the mint itself.
            tx = token.functions.mint(who, 1000 * 10**6).transact({"from": _address_of(DEPLOYER)})
            w3.eth.wait_for_transaction_receipt(tx)
        fab = self.admin.chain.contract("FABToken")
        for index in HOSTS:  # the seed stakes only account 1; the others need FAB too
            tx = fab.functions.transfer(_address_of(index), 10_000 * 10**18).transact(
                {"from": _address_of(DEPLOYER)}
            )
            w3.eth.wait_for_transaction_receipt(tx)
        gw = sdk_for(GATEWAY_ACCOUNT, self.anvil, self.chain_id, self.workdir)
        gw.get_payment_manager().deposit("200", "USDC")

    def _client_accounts(self) -> list[int]:
        return list(range(FIRST_CLIENT, FIRST_CLIENT + self.opts.sdk_clients))

    def _spawn_upstream(self) -> None:
        self.upstream_port = free_port()
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(models.local_path(self.entry)),
            "--host", "127.0.0.1", "--port", str(self.upstream_port), "--n_threads", "1",
            "--n_ctx", "2048", "--interrupt_requests", "False", "--model_alias", ALIAS,
        ]  # fmt: skip
        p = Process("upstream", cmd, self.workdir / "upstream.log")
        self.procs["upstream"] = p
        p.start()

    def _wait_upstream(self) -> None:
        self.procs["upstream"].wait_port(self.upstream_port)
        deadline = time.monotonic() + 60
        while True:  # the port opens before the model is loaded
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.upstream_port}/v1/models", timeout=5
                ) as r:
                    if r.status == 200:
                        return
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.3)

    def _start_worker(self, h: HostSpec) -> None:
        key = self.workdir / f"host-{h.account}.key"
        key.write_text(test_private_key(h.account))
        cmd = [
            sys.executable, "-m", "fabstir.host", "--rpc-url", self.rpc,
            "--chain-id", str(self.chain_id), "--deployments-dir", str(self.deployments),
            "--key-file", str(key), "--port", str(h.port), "--public-url", h.url,
            "--db", str(self.workdir / f"host-{h.account}.db"),
            "--max-tokens-per-request", "64", "--prompts-per-minute", "100000",
            "--system-prompt", "", "--log-level", "WARNING", "--settlement-interval", "2",
            "--settlement-coalesce", "0.5", "--chain-poll-interval", "3",
            "--idle-timeout", "20", "--receipt-timeout", "20", "--rpc-timeout", "10",
            # Deeper than the injected reorg: a dropped settlement is sent again.
            "--confirmations", str(REORG_DEPTH + 2),
        ]  # fmt: skip
        if h.upstream:
            cmd += [
                "--engine", "upstream",
                "--upstream-url", f"http://127.0.0.1:{self.upstream_port}/v1",
                "--upstream-model", ALIAS, "--upstream-attested",
                "--upstream-read-timeout", "30", "--n-ctx", "2048",
            ]  # fmt: skip
        else:
            cmd += ["--n-threads", "1", "--max-sequences", "8"]
        name = f"worker-{h.account}"
        p = self.procs.get(name) or Process(name, cmd, self.workdir / f"{name}.log")
        self.procs[name] = p
        p.start()

    def _start_gateway(self) -> None:
        self.gateway_port = free_port()
        env = {
            **os.environ,
            "FABSTIR_HOME": str(self.workdir / "gateway-home"),
            "FABSTIR_DEPLOYMENTS_DIR": str(self.deployments),
        }
        cmd = [
            FABSTIR, "gateway", "--network", self.rpc, "--account", f"test:{GATEWAY_ACCOUNT}",
            "--budget", "150", "--deposit", "1.0", "--max-tokens", str(self.opts.max_tokens),
            "--proof-interval", "32", "--port", str(self.gateway_port),
            "--sessions-per-host", "4", "--idle-timeout", "60",
        ]  # fmt: skip
        p = Process("gateway", cmd, self.workdir / "gateway.log", env)
        self.procs["gateway"] = p
        p.start()
        p.wait_port(self.gateway_port)

    # ------------------------------------------------------------------ load

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        # The SDK does its chain calls in threads: one per client at least.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=4 * self.opts.sdk_clients + 16))
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.opts.duration
        tasks = [
            asyncio.create_task(self._sdk_client(i, index))
            for i, index in enumerate(self._client_accounts())
        ]
        threads = [
            threading.Thread(target=self._gateway_client, args=(i,), daemon=True)
            for i in range(self.opts.gateway_clients)
        ]
        for t in threads:
            t.start()
        faults = asyncio.create_task(self._inject_faults())
        await asyncio.gather(*tasks)
        await faults
        for t in threads:
            await asyncio.to_thread(t.join, REQUEST_TIMEOUT + 30)
            if t.is_alive():
                self.stats.unclear.append("a gateway client thread did not finish")

    async def _sdk_client(self, n: int, index: int) -> None:
        from fabstir.errors import SDKError

        rng = random.Random(self.opts.seed * 1000 + n)
        sdk = sdk_for(index, self.rpc, self.chain_id, self.workdir)
        sessions = sdk.get_session_manager()
        jobs = sdk.get_session_job_manager()
        token = "ETH" if n % 3 == 2 else "USDC"
        # 2.0, not 1.0: at 300 per token 1.0 USDC buys 3,333 whole tokens = 0.9999 USDC,
        # below the 1.0 minimum (the SDK refuses it with DEPOSIT_TOO_LOW).
        deposit = "0.002" if token == "ETH" else "2.0"
        vanish, close = asyncio.Event(), asyncio.Event()
        self.vanish_requests.append(vanish)
        self.close_requests.append(close)
        await asyncio.sleep(rng.uniform(0, 3))  # do not all start in the same block
        try:
            await asyncio.to_thread(
                sdk.get_payment_manager().deposit, "0.05" if token == "ETH" else "40", token
            )
        except SDKError as exc:
            self.stats.outcome(exc.code.value, exc.message)
            return
        while time.monotonic() < self.deadline:
            candidates = [h for h in self.hosts if h.address not in self.unregistered]
            if rng.random() < 0.05:
                candidates = self.hosts  # sometimes a stale host list: a clear refusal
            host = rng.choice(candidates)
            try:
                started = await asyncio.wait_for(
                    sessions.start_session(
                        self.entry.model_id,
                        host.address,
                        {
                            "deposit_amount": deposit,
                            "price_per_token": host.eth_price
                            if token == "ETH"
                            else host.usdc_price,
                            "duration": SESSION_DURATION,
                            "proof_interval": 32,
                        },
                        host.url,
                        payment_token=token,
                    ),
                    REQUEST_TIMEOUT,
                )
            except SDKError as exc:
                self.stats.outcome(exc.code.value, exc.message)
                orphan = exc.details.get("session_id")
                if isinstance(orphan, int):
                    # Opened on chain but unusable (the SDK requested its close): it is
                    # checked like any other (nothing signed, so nothing may be paid).
                    record = ClientSession(orphan, str(sdk.address), token, ending="failed_start")
                    record.codes.append(exc.code.value)
                    self.stats.sessions.append(record)
                await asyncio.sleep(2)
                continue
            except TimeoutError:
                self.stats.unclear.append(f"client {index}: start_session hung")
                continue
            sid = started.session_id
            record = ClientSession(sid, str(sdk.address), token, tx_hash=started.tx_hash)
            self.stats.sessions.append(record)
            await self._converse(rng, sdk, sessions, jobs, record, vanish, close)

    async def _converse(
        self,
        rng: random.Random,
        sdk: Any,
        sessions: Any,
        jobs: Any,
        record: ClientSession,
        vanish: asyncio.Event,
        close: asyncio.Event,
    ) -> None:
        from fabstir.errors import SDKError

        sid = record.session_id
        turns = rng.randint(2, 4)
        pause_at = rng.randint(1, turns - 1) if rng.random() < 0.25 else -1
        failed = False
        for turn in range(turns):
            if time.monotonic() > self.deadline:
                break
            if turn == pause_at:
                try:
                    await sessions.pause_session(sid)
                    await asyncio.sleep(rng.uniform(1, 4))
                    await sessions.resume_session(sid)
                    self.stats.outcome("ok")  # the resume is a request too
                except SDKError as exc:
                    self.stats.outcome(exc.code.value, exc.message)
                    record.codes.append(exc.code.value)
            vanishing = vanish.is_set()
            code = await self._prompt(sessions, sid, rng.choice(PROMPTS), vanishing)
            if code != "ok":
                record.codes.append(code)
            self._note_receipts(sessions, record)
            if vanishing:
                vanish.clear()
                record.ending = "vanished"
                await sessions.close_all()  # gone: no receipt, no close, no goodbye
                return
            if close.is_set():
                close.clear()
                record.ending = "closed_on_chain"
                try:
                    await asyncio.to_thread(jobs.request_close, sid, sessions.latest_receipt(sid))
                    self.stats.outcome("ok")
                except SDKError as exc:
                    self.stats.outcome(exc.code.value, exc.message)
                    record.codes.append(exc.code.value)
                await sessions.close_all()  # and never tells the host
                return
            if code != "ok":
                failed = True
                # A dropped connection (worker killed, outage): reconnect once it is back.
                await asyncio.sleep(3)
                try:
                    await sessions.resume_session(sid)
                    failed = False
                    self.stats.outcome("ok")
                except SDKError as exc:
                    self.stats.outcome(exc.code.value, exc.message)
                    record.codes.append(exc.code.value)
                    break
        record.ending = "failed" if failed else "completed"
        t = time.monotonic()
        try:
            result = await asyncio.wait_for(
                sessions.complete_session(sid, settle_timeout=self.opts.settle_timeout),
                REQUEST_TIMEOUT,
            )
            self.stats.outcome("ok")
            if result.settled_by_host:
                record.lag_s = time.monotonic() - t
        except SDKError as exc:
            self.stats.outcome(exc.code.value, exc.message)
            record.codes.append(exc.code.value)
        except TimeoutError:
            self.stats.unclear.append(f"session {sid}: complete_session hung")
            record.codes.append("HANG")
        self._note_receipts(sessions, record)

    def _note_receipts(self, sessions: Any, record: ClientSession) -> None:
        receipt = sessions.latest_receipt(record.session_id)
        record.signed = receipt.tokens_used if receipt is not None else 0
        record.acked = max(record.acked, sessions.acknowledged_tokens(record.session_id))

    async def _prompt(self, sessions: Any, sid: int, prompt: str, vanish: bool) -> str:
        from fabstir.errors import SDKError

        t0 = time.perf_counter()
        first: float | None = None
        before = sessions.tokens_received(sid)

        async def run() -> None:
            nonlocal first
            chunks = 0
            async for _chunk in sessions.send_prompt_streaming(
                sid, prompt, max_tokens=self.opts.max_tokens
            ):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - t0
                if vanish and chunks >= 2:
                    return  # the client disappears in the middle of the answer

        try:
            await asyncio.wait_for(run(), REQUEST_TIMEOUT)
            code = "ok"
        except SDKError as exc:
            code = exc.code.value
            self.stats.examples.setdefault(code, exc.message[:300])
        except TimeoutError:
            self.stats.unclear.append(f"session {sid}: a prompt hung for {REQUEST_TIMEOUT}s")
            code = "HANG"
        with self.stats.lock:
            self.stats.tokens += sessions.tokens_received(sid) - before
            if first is not None and code == "ok" and not vanish:
                self.stats.first_token_s.append(first)
        self.stats.outcome(code)
        return code

    def _gateway_client(self, n: int) -> None:
        import openai

        rng = random.Random(self.opts.seed * 7919 + n)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{self.gateway_port}/v1",
            api_key="x",
            max_retries=0,
            timeout=REQUEST_TIMEOUT,
        )
        time.sleep(rng.uniform(0, 3))
        while time.monotonic() < self.deadline:
            prompt = rng.choice(PROMPTS)
            t0 = time.perf_counter()
            try:
                if rng.random() < 0.5:
                    stream = client.chat.completions.create(
                        model=self.model_name,
                        messages=[{"role": "user", "content": prompt}],
                        max_tokens=self.opts.max_tokens,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    first, tokens = None, 0
                    for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content and first is None:
                            first = time.perf_counter() - t0
                        if chunk.usage is not None:
                            tokens = chunk.usage.completion_tokens
                    with self.stats.lock:
                        self.stats.tokens += tokens
                        if first is not None:
                            self.stats.first_token_s.append(first)
                else:
                    reply = client.chat.completions.create(
                        model=self.model_name,
                        messages=[{"role": "user", "content": prompt}],
                        max_tokens=self.opts.max_tokens,
                    )
                    with self.stats.lock:
                        self.stats.tokens += reply.usage.completion_tokens if reply.usage else 0
                self.stats.outcome("ok")
            except openai.APIStatusError as exc:
                body = exc.body if isinstance(exc.body, dict) else {}
                err = body.get("error", body) if isinstance(body, dict) else {}
                code = err.get("code") if isinstance(err, dict) else None
                if code:
                    self.stats.outcome(f"gateway:{code}", str(exc))
                else:
                    self.stats.unclear.append(f"gateway HTTP {exc.status_code} without a code")
                    self.stats.outcome(f"gateway:http_{exc.status_code}")
                time.sleep(1)
            except openai.APITimeoutError:
                self.stats.unclear.append("a gateway request hung")
                self.stats.outcome("HANG")
            except openai.APIError as exc:
                # A stream cut short by the gateway carries its error object in the stream.
                code = getattr(exc, "code", None) or type(exc).__name__
                self.stats.outcome(f"gateway:{code}", str(exc))
                time.sleep(1)

    # ------------------------------------------------------------------ faults

    async def _inject_faults(self) -> None:
        for fault in self.faults:
            wait = self.t0 + fault.at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            fault.at_monotonic = time.monotonic()
            try:
                await getattr(self, f"_fault_{fault.kind}")(fault)
                fault.done = True
            except Exception as exc:  # a fault that could not be injected is reported
                fault.error = repr(exc)

    async def _fault_worker_kill(self, fault: Fault) -> None:
        h = self.rng.choice([h for h in self.hosts if not h.upstream])
        p = self.procs[f"worker-{h.account}"]
        await asyncio.to_thread(p.kill9)
        fault.detail = f"kill -9 worker of host {h.account}"
        await asyncio.sleep(2)
        self._start_worker(h)
        await asyncio.to_thread(p.wait_port, h.port)

    async def _fault_rpc_outage(self, fault: Fault) -> None:
        assert self.proxy is not None
        self.proxy.fail_next(-1, status=503)
        fault.detail = f"every RPC answered 503 for {self.opts.outage_s:.0f} s"
        await asyncio.sleep(self.opts.outage_s)
        self.proxy.clear()

    async def _fault_client_vanish(self, fault: Fault) -> None:
        picked = self.rng.sample(self.vanish_requests, k=min(2, len(self.vanish_requests)))
        for e in picked:
            e.set()
        fault.detail = f"{len(picked)} clients vanish mid-stream"

    async def _fault_client_close_on_chain(self, fault: Fault) -> None:
        picked = self.rng.sample(self.close_requests, k=min(2, len(self.close_requests)))
        for e in picked:
            e.set()
        fault.detail = f"{len(picked)} clients close on chain without telling their host"

    async def _fault_host_unregister(self, fault: Fault) -> None:
        h = self.hosts[1]
        sdk = sdk_for(h.account, self.rpc, self.chain_id, self.workdir)
        self.unregistered.add(h.address)
        await asyncio.to_thread(sdk.get_host_manager().unregister_host)
        fault.detail = f"host {h.account} unregisters with open sessions"

    async def _fault_reorg(self, fault: Fault) -> None:
        depth = REORG_DEPTH
        # Reorganise a session's creation away when one comes soon, so the run shows
        # what happens to its client (see check_reorged); else reorg whatever is there.
        opened = await asyncio.to_thread(self._session_in_tip, 15.0)
        await asyncio.to_thread(_rpc, self.anvil, "anvil_reorg", [depth, []])
        fault.detail = f"anvil_reorg depth {depth} (their transactions dropped" + (
            f"; session {opened} was opened in the newest block)" if opened else ")"
        )

    def _session_in_tip(self, timeout: float) -> int | None:
        """Wait until the newest block opens a session; its id (None on timeout)."""
        market = self.admin.chain.contract("JobMarketplace")
        event = market.events.SessionCreated()
        w3 = self.admin.chain.w3
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            block = w3.eth.get_block("latest")
            receipts = [w3.eth.get_transaction_receipt(h) for h in block["transactions"]]
            for receipt in receipts:
                for log in event.process_receipt(receipt, errors=DISCARD):
                    return int(log["args"]["sessionId"])
            time.sleep(0.15)
        return None

    async def _fault_upstream_restart(self, fault: Fault) -> None:
        p = self.procs["upstream"]
        await asyncio.to_thread(p.kill9)
        await asyncio.sleep(1)
        p.start()
        await asyncio.to_thread(p.wait_port, self.upstream_port)
        fault.detail = "llama_cpp.server killed and started again on its port"

    # ------------------------------------------------------------------ ending

    def drain(self) -> None:
        """Gateway closes its sessions; hosts settle what they can; then time moves past
        every session's end (hosts settle expired sessions with their newest receipt)
        and past the settlement window, and the rest is finalized. The long run first
        waits for the hosts as they are; the short one moves time at once. Every wait
        ends early once nothing has changed on chain for `quiet` seconds."""
        t = time.monotonic()
        gw = self.procs["gateway"]
        self.gateway_exit = gw.stop(timeout=180)
        t = self._mark("drain.gateway_stop", t)
        market = self.admin.chain.contract("JobMarketplace")
        count = int(self.admin.chain.call(market.functions.sessionCount()))
        jobs = self.admin.get_session_job_manager()

        def open_sessions() -> list[int]:
            return [
                sid
                for sid in range(1, count + 1)
                if jobs.get_session(sid).status.name in ("ACTIVE", "CLOSING")
            ]

        def settle_wait(limit: float, quiet: float) -> None:
            deadline, left = time.monotonic() + limit, open_sessions()
            since = time.monotonic()
            while left and time.monotonic() < deadline and time.monotonic() - since < quiet:
                time.sleep(1.0)
                now_left = open_sessions()
                if now_left != left:
                    left, since = now_left, time.monotonic()

        short = self.opts.short
        if not short:
            settle_wait(90, quiet=30)
            t = self._mark("drain.hosts_settle", t)
        # Past every end: hosts settle expired sessions with their newest receipt.
        _rpc(self.anvil, "evm_increaseTime", [SESSION_DURATION + 60])
        _rpc(self.anvil, "evm_mine", [])
        # A host's settlement pass: up to its interval (2 s), a batch, a 1 s block; a
        # failed pass backs off up to the interval. 8 s unchanged means none is coming.
        settle_wait(60, quiet=8 if short else 20)
        t = self._mark("drain.after_end", t)
        _rpc(self.anvil, "evm_increaseTime", [SETTLEMENT_WINDOW + 60])
        _rpc(self.anvil, "evm_mine", [])
        if not short:
            settle_wait(30, quiet=10)
        # Anyone may finalize: each from its own client wallet, so they share a block.
        self.finalized = open_sessions()
        finalizers = [
            sdk_for(index, self.anvil, self.chain_id, self.workdir).get_session_job_manager()
            for index in self._client_accounts()
        ]
        k = len(finalizers)

        def finalize_share(n: int) -> None:
            for sid in self.finalized[n::k]:  # one wallet's share, one after another
                finalizers[n].finalize(sid)

        with ThreadPoolExecutor(max_workers=k) as pool:
            list(pool.map(finalize_share, range(k)))
        self.session_count = count
        self._mark("drain.finalize", t)

    def stop_workers(self) -> None:
        """SIGTERM every worker at once (each settles and exits), then collect them."""
        workers = {n: p for n, p in self.procs.items() if n.startswith("worker-")}
        with ThreadPoolExecutor(max_workers=len(workers)) as pool:
            stopped = pool.map(lambda p: p.stop(timeout=90), workers.values())
            finals = dict(zip(workers, stopped, strict=True))
        self.worker_exits: dict[str, list[int | None]] = {
            name: [*p.exits, finals[name]] for name, p in workers.items()
        }

    def withdraw_all(self) -> None:
        """Every party withdraws; parties in parallel (each its own nonces)."""
        from fabstir.errors import SDKError

        def host(account: int) -> None:
            sdk = sdk_for(account, self.anvil, self.chain_id, self.workdir)
            with contextlib.suppress(SDKError):  # INSUFFICIENT_BALANCE: nothing owed
                sdk.get_host_manager().withdraw_earnings(["USDC", "ETH"])

        def treasurer() -> None:
            treasury = self.admin.get_treasury_manager()
            for tok in ("USDC", "ETH"):
                fees = treasury.get_treasury_balance(tok)
                if self.admin.get_token(tok).parse(fees) > 0:
                    treasury.withdraw_treasury_funds(tok, fees)

        def client(index: int) -> None:
            sdk = sdk_for(index, self.anvil, self.chain_id, self.workdir)
            for tok in ("USDC", "ETH"):
                with contextlib.suppress(SDKError):
                    sdk.get_payment_manager().withdraw(None, tok)

        jobs: list[Any] = [treasurer]
        jobs += [lambda a=h.account: host(a) for h in self.hosts]
        jobs += [lambda i=i: client(i) for i in [GATEWAY_ACCOUNT, *self._client_accounts()]]
        with ThreadPoolExecutor(max_workers=8) as pool:
            for done in [pool.submit(job) for job in jobs]:
                done.result()  # an unexpected failure fails the run

    # ------------------------------------------------------------------ checks

    def check(self) -> None:
        from fabstir.chain.logscan import event_logs

        chain = self.admin.chain
        market = chain.contract("JobMarketplace")
        fee_bps = self.admin.get_treasury_manager().get_fee_bps()
        settled = event_logs(chain, market.events.SessionSettled(), from_block=self.start_block)
        by_session: dict[int, list[Any]] = {}
        for log in settled:
            by_session.setdefault(int(log["args"]["sessionId"]), []).append(log["args"])
        created = {
            int(log["args"]["sessionId"]): log["transactionHash"].hex()
            for log in event_logs(
                chain, market.events.SessionCreated(), from_block=self.start_block
            )
        }
        jobs = self.admin.get_session_job_manager()
        infos = {sid: jobs.get_session(sid) for sid in range(1, self.session_count + 1)}
        bad_split, not_settled, twice = [], [], []
        for sid, info in infos.items():
            logs = by_session.get(sid, [])
            if info.status.name != "SETTLED" or not logs:
                not_settled.append(sid)
                continue
            if len(logs) != 1:
                twice.append(sid)
            a = logs[-1]
            cost = int(a["tokensUsed"]) * info.price_per_token
            if not (
                int(a["tokensUsed"]) == info.tokens_used
                and int(a["hostAmount"]) + int(a["fee"]) == cost
                and int(a["fee"]) == cost * fee_bps // 10_000
                and int(a["hostAmount"]) + int(a["fee"]) + int(a["refund"]) == info.deposit_raw
                and info.tokens_used <= info.max_tokens
            ):
                bad_split.append(sid)
        self.settled_count = len(infos) - len(not_settled)
        self.checks["every session settled or finalized"] = not not_settled
        self.checks["settled exactly once"] = not twice
        self.checks[
            "split and refund exact (host + fee == tokens x price, + refund == deposit)"
        ] = not bad_split
        lost, overpaid = [], []
        reorged: list[ClientSession] = []
        for rec in self.stats.sessions:
            info = infos.get(rec.session_id)
            if info is None or reorged_away(rec, info.depositor, created.get(rec.session_id)):
                reorged.append(rec)
                continue
            if info.tokens_used > rec.signed:
                overpaid.append(rec.session_id)
            if info.tokens_used < rec.acked:
                lost.append(rec.session_id)
        self.checks["no host paid more than its client signed"] = not overpaid
        self.checks["no acknowledged receipt lost (paid >= newest ack)"] = not lost
        if overpaid or lost or bad_split or not_settled or twice:
            self.problems.append(
                f"overpaid {overpaid} lost {lost} bad split {bad_split} "
                f"not settled {not_settled} settled twice {twice}"
            )
        gateway_reorged = self._check_gateway(infos)
        self._check_reorged(infos, reorged, gateway_reorged)
        self._check_parties(chain, market, by_session, infos)
        # The books, per token, after everyone withdrew: nothing owed, nothing held.
        earnings = chain.contract("HostEarnings")
        treasury = chain.contract("Treasury")
        users = [
            _address_of(i) for i in [DEPLOYER, GATEWAY_ACCOUNT, *HOSTS, *self._client_accounts()]
        ]
        books: dict[str, Any] = {}
        for tok in ("USDC", "ETH"):
            spec = self.admin.get_token(tok)
            if tok == "ETH":
                held = int(chain.w3.eth.get_balance(market.address))
            else:
                erc = chain.contract("USDC", spec.address)
                held = int(chain.call(erc.functions.balanceOf(market.address)))
            owed = int(chain.call(treasury.functions.balanceOf(spec.address)))
            for u in users:
                owed += int(chain.call(market.functions.balanceOf(u, spec.address)))
                owed += int(chain.call(market.functions.escrowedOf(u, spec.address)))
                owed += int(chain.call(earnings.functions.balanceOf(u, spec.address)))
            b = VaultBooks(held=held, owed=owed)
            books[tok] = {"held": held, "owed": owed, "surplus": b.surplus}
            self.checks[f"{tok} books: nothing owed and the vault empty"] = owed == 0 and held == 0
        self.figures["books"] = books
        exits_ok = all(
            all(code == -signal.SIGKILL for code in codes[:-1]) and codes[-1] == 0
            for codes in self.worker_exits.values()
        )
        self.checks["no worker died except by injected kills (clean exit at the end)"] = exits_ok
        self.checks[
            "every request ended with an answer or a clear error code"
        ] = not self.stats.unclear
        self.checks["gateway shut down cleanly"] = self.gateway_exit == 0
        self.checks["every scheduled fault injected"] = all(f.done for f in self.faults)
        self.figures["sessions_reorged_away"] = len(reorged) + len(gateway_reorged)
        self.figures["sessions_finalized_by_anyone"] = len(self.finalized)

    def _check_gateway(self, infos: dict[int, Any]) -> list[int]:
        """Per gateway session, from the gateway's own ledger: the host was paid at
        least the newest receipt it acknowledged and at most the newest the gateway
        signed, at the price and deposit the gateway booked (so the refund is exact);
        and the ledger knows every session the gateway's wallet opened. Returns the
        ledger's sessions whose creation a reorg removed."""
        from fabstir.gateway.ledger import Ledger

        wallet = _address_of(GATEWAY_ACCOUNT)
        market = self.admin.chain.contract("JobMarketplace").address
        ledger = Ledger(
            self.workdir / "gateway-home" / "gateway.db",
            chain_id=self.chain_id, marketplace=str(market), wallet=wallet,
        )  # fmt: skip
        try:
            records = ledger.sessions()
        finally:
            ledger.close()
        mine = {sid for sid, i in infos.items() if i.depositor.lower() == wallet.lower()}
        lost, overpaid, terms, reorged = [], [], [], []
        for rec in records:
            info = infos.get(rec.session_id)
            if info is None or info.depositor.lower() != wallet.lower():
                reorged.append(rec.session_id)
                continue
            if info.tokens_used > rec.signed:
                overpaid.append(rec.session_id)
            if info.tokens_used < rec.acked:
                lost.append(rec.session_id)
            if (rec.price, rec.deposit, rec.tokens) != (
                info.price_per_token,
                info.deposit_raw,
                info.tokens_used,
            ):
                terms.append(rec.session_id)
        unbooked = sorted(mine - {r.session_id for r in records})
        self.checks["gateway sessions: no host paid more than the gateway signed"] = not overpaid
        self.checks["gateway sessions: no acknowledged receipt lost"] = not lost
        self.checks["gateway ledger: price, deposit and final tokens match the chain"] = not terms
        self.checks["gateway ledger knows every session its wallet opened"] = not unbooked
        if overpaid or lost or terms or unbooked:
            self.problems.append(
                f"gateway: overpaid {overpaid} lost {lost} terms differ {terms} "
                f"not in the ledger {unbooked}"
            )
        self.figures["gateway_sessions"] = len(records) - len(reorged)
        self.figures["gateway_signed_tokens"] = sum(r.signed for r in records)
        return reorged

    def _check_reorged(
        self, infos: dict[int, Any], sdk: list[ClientSession], gateway: list[int]
    ) -> None:
        """Sessions a reorg removed: no host is paid for them (no session of that
        depositor on chain that it does not know of carries tokens), and the SDK
        client met an error with one of the SDK's codes in it, no hang, unless it
        had vanished by then (the escrow's return is in the per-party money check)."""
        known: dict[str, set[int]] = {}
        for rec in self.stats.sessions:
            if rec not in sdk:
                known.setdefault(rec.depositor.lower(), set()).add(rec.session_id)
        paid = []
        for who in {r.depositor.lower() for r in sdk}:
            for sid, info in infos.items():
                unknown = info.depositor.lower() == who and sid not in known.get(who, set())
                if unknown and info.tokens_used != 0:
                    paid.append(sid)
        from fabstir.errors import SDKErrorCode

        clear = {c.value for c in SDKErrorCode}
        # A client that vanished on purpose is not there to see anything.
        silent = [
            r.session_id
            for r in sdk
            if r.ending != "vanished" and (not r.codes or set(r.codes) - clear)
        ]
        self.checks["reorged sessions: no host paid for them"] = not paid
        self.checks["reorged sessions: the client met a clear error code"] = not silent
        if paid or silent:
            self.problems.append(f"reorged: paid {paid} no clear error {silent}")
        self.figures["reorged_sdk_sessions"] = [asdict(r) for r in sdk]
        self.figures["reorged_gateway_sessions"] = gateway

    def _check_parties(
        self, chain: Any, market: Any, settled: dict[int, list[Any]], infos: dict[int, Any]
    ) -> None:
        """Every client's money, per token, to the unit: what it deposited less what it
        withdrew is exactly what its settled sessions cost. A session a reorg removed,
        or any escrow not given back, would show here."""
        from fabstir.chain.logscan import event_logs

        parties = {_address_of(i).lower() for i in [GATEWAY_ACCOUNT, *self._client_accounts()]}
        net: Counter[tuple[str, str]] = Counter()
        for log in event_logs(chain, market.events.Deposited(), from_block=self.start_block):
            net[(str(log["args"]["user"]).lower(), str(log["args"]["token"]).lower())] += int(
                log["args"]["amount"]
            )
        for log in event_logs(chain, market.events.Withdrawn(), from_block=self.start_block):
            net[(str(log["args"]["user"]).lower(), str(log["args"]["token"]).lower())] -= int(
                log["args"]["amount"]
            )
        for sid, logs in settled.items():
            info = infos.get(sid)
            if info is None:
                continue
            a = logs[-1]
            key = (info.depositor.lower(), str(a["token"]).lower())
            net[key] -= int(a["hostAmount"]) + int(a["fee"])
        wrong = {f"{u}/{t}": v for (u, t), v in net.items() if u in parties and v != 0}
        self.checks["every client's deposits - withdrawals == its sessions' cost"] = not wrong
        if wrong:
            self.problems.append(f"client money off by {wrong}")

    def report(self) -> dict[str, Any]:
        s = self.stats
        lags = [r.lag_s for r in s.sessions if r.lag_s is not None]
        served = s.requests.get("ok", 0)
        gas, txs = self._gas()
        sessions = self.session_count
        faults = [
            {
                **{k: v for k, v in asdict(f).items() if k != "at_monotonic"},
                "survived": f.done
                and any(t > f.at_monotonic + 1 for t in s.ok_times)
                and all(self.checks.values()),
            }
            for f in self.faults
        ]
        figures = {
            "sessions_on_chain": sessions,
            "sessions_sdk": len(s.sessions),
            "sessions_settled": self.settled_count,
            "requests_served": served,
            "requests_failed": sum(v for k, v in s.requests.items() if k != "ok"),
            "tokens": s.tokens,
            "tokens_per_s": s.tokens / self.opts.duration,
            "first_token_s": {f"p{q}": _percentile(s.first_token_s, q) for q in (50, 95, 99)},
            "settlement_lag_s": {f"p{q}": _percentile(lags, q) for q in (50, 99)},
            "gas_per_session": gas / sessions if sessions else None,
            "marketplace_txs": txs,
            "errors_by_code": {k: v for k, v in s.requests.items() if k != "ok"},
            "unclear": s.unclear,
            "error_examples": s.examples,
            "proxy_faults": dict(self.proxy.injected) if self.proxy else {},
            **self.figures,
        }
        return {
            "machine": {**machine(), "loadavg_1m": os.getloadavg()[0]},
            "seed": self.opts.seed,
            "duration_s": self.opts.duration,
            "short": self.opts.short,
            "clients": {"sdk": self.opts.sdk_clients, "gateway": self.opts.gateway_clients},
            "hosts": [asdict(h) for h in self.hosts],
            "fault_schedule": faults,
            "figures": figures,
            "checks": self.checks,
            "problems": self.problems,
            "sdk_sessions": [asdict(r) for r in s.sessions],
            "passed": all(self.checks.values()),
        }

    def _gas(self) -> tuple[int, int]:
        """Gas of every transaction sent to the marketplace during the run."""
        w3 = self.admin.chain.w3
        market = self.admin.chain.contract("JobMarketplace").address.lower()
        total, txs = 0, 0
        for n in range(self.start_block + 1, w3.eth.block_number + 1):
            for tx in w3.eth.get_block(n, full_transactions=True)["transactions"]:
                if str(tx.get("to") or "").lower() == market:
                    total += int(w3.eth.get_transaction_receipt(tx["hash"])["gasUsed"])
                    txs += 1
        return total, txs

    def close(self) -> None:
        for p in self.procs.values():
            with contextlib.suppress(Exception):
                p.stop(timeout=30)
        if self.proxy is not None:
            self.proxy.stop()
        self.chain.down()
        if self.own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _address_of(index: int) -> str:
    from eth_account import Account

    return str(Account.from_key(test_private_key(index)).address)


def run_soak(opts: SoakOptions) -> dict[str, Any]:
    soak = Soak(opts)
    phases: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        t = time.monotonic()
        try:
            return fn()
        finally:
            phases[name] = round(time.monotonic() - t, 1)

    # SIGTERM (a CI timeout) ends like Ctrl-C: through the finally below.
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        timed("setup", soak.up)
        timed("load", lambda: asyncio.run(soak.load()))
        timed("drain", soak.drain)
        timed("stop_workers", soak.stop_workers)
        timed("withdraw", soak.withdraw_all)
        timed("check", soak.check)
        result = soak.report()
        result["phases_s"] = {**phases, **soak.phases}
        return result
    finally:
        soak.close()
        signal.signal(signal.SIGTERM, previous)


def print_report(result: dict[str, Any]) -> None:
    f = result["figures"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:,.0f} ms"

    def sec(v: float | None) -> str:
        return "-" if v is None else f"{v:,.1f} s"

    rows = [
        ["duration", f"{result['duration_s']:,.0f} s (seed {result['seed']})"],
        ["clients", f"{result['clients']['sdk']} SDK + {result['clients']['gateway']} gateway"],
        ["sessions on chain / settled", f"{f['sessions_on_chain']} / {f['sessions_settled']}"],
        ["finalized by anyone (after time moved)", str(f["sessions_finalized_by_anyone"])],
        ["requests served / failed", f"{f['requests_served']} / {f['requests_failed']}"],
        ["aggregate tokens/s", f"{f['tokens_per_s']:.1f} ({f['tokens']} tokens)"],
        ["first token p50 / p95 / p99", " / ".join(ms(v) for v in f["first_token_s"].values())],
        ["settlement lag p50 / p99", " / ".join(sec(v) for v in f["settlement_lag_s"].values())],
        ["gas per session", "-" if f["gas_per_session"] is None else f"{f['gas_per_session']:,.0f}"],
        ["errors by code", ", ".join(f"{k} {v}" for k, v in sorted(f["errors_by_code"].items()))
         or "none"],
        ["faults injected / survived",
         f"{sum(x['done'] for x in result['fault_schedule'])} / "
         f"{sum(x['survived'] for x in result['fault_schedule'])} of {len(result['fault_schedule'])}"],
    ]  # fmt: skip
    print(table(["soak", ""], rows))
    print()
    print(table(["at (s)", "fault", "detail", "survived"], [
        [x["at"], x["kind"], x["detail"] or (x["error"] or ""), x["survived"]]
        for x in result["fault_schedule"]
    ]))  # fmt: skip
    print()
    for name, ok in result["checks"].items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    for p in result["problems"]:
        print(f"  problem: {p}")
    phases = result.get("phases_s", {})
    print("  phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="load phase, seconds")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--sdk-clients", type=int, default=24)
    parser.add_argument("--gateway-clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--workdir", type=Path, help="keep logs and databases here")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/soak.json)")
    parser.add_argument(
        "--short",
        action="store_true",
        help="CI mode: faults compressed into the first half, 5 s RPC outage, time moved "
        "forward at once after the load",
    )
    args = parser.parse_args(argv)
    models.fetch(models.find())
    # The SDK's retry warnings would drown the table; the figures count the errors.
    logging.getLogger("fabstir").setLevel(logging.ERROR)
    opts = SoakOptions(
        duration=args.duration,
        seed=args.seed,
        sdk_clients=args.sdk_clients,
        gateway_clients=args.gateway_clients,
        max_tokens=args.max_tokens,
        workdir=args.workdir,
        out=args.out,
        short=args.short,
    )
    result = run_soak(opts)
    print_report(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    else:
        print(f"wrote {save('soak', result)}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
