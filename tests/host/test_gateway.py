"""`fabstir gateway` end to end: the official `openai` client (and curl) against the
gateway, real host workers serving the bundled model, real anvil. What a client
sees (OpenAI shapes, errors, streaming), what the chain settles (usage equals what
hosts were paid), and what happens when things fail (budget, hosts, kill -9)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from support.accounts import test_key as key_of
from support.host_env import HOST_MIN_PRICE, HostEnv
from support.rpc_proxy import FaultProxy
from support.tcp_proxy import TcpProxy
from support.waits import wait_until
from support.worker import WorkerThread

from fabstir import models
from fabstir.chain.deployments import ContractRecord, Deployment, write_deployment
from fabstir.chain.local import free_port
from fabstir.gateway.ledger import Ledger
from fabstir.gateway.pool import PoolConfig, SessionPool
from fabstir.gateway.server import Gateway, ServerSettings
from fabstir.host.config import Limits
from fabstir.host.engines.llama import LlamaBatchEngine
from fabstir.sdk.sdk import FabstirSDK
from fabstir.sdk.types import SessionStatus

FABSTIR = str(Path(sys.executable).parent / "fabstir")
CLIENT = 8
ACCOUNT = ("--account", f"test:{CLIENT}")
CURL_POST = ("curl", "-sN", "-H", "Content-Type: application/json", "-d")
OTHER_HOST = 6
OTHER_HOST_PRICE = HOST_MIN_PRICE + 50
MODEL = f"{models.find().repo}/{models.find().file}"
OTHER_MODEL_NAME = "CohereForAI/TinyVicuna-1B-32k-GGUF/tiny-vicuna-1b.q4_k_m.gguf"
# Small sessions so budgets and retirement show within a few requests.
POOL = PoolConfig(
    budget=5_000_000,
    deposit=50_000,  # 0.05 USDC: 500 tokens at the cheapest host's price
    max_tokens=24,
    sessions_per_host=2,
    proof_interval=16,
    settle_timeout=5.0,
    host_cooldown=60.0,
    queue_timeout=60.0,
)
HELLO = [{"role": "user", "content": "Say hello in five words."}]


# ----------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def second_engine(model_path: Path) -> Iterator[LlamaBatchEngine]:
    eng = LlamaBatchEngine(model_path, n_ctx=1024, max_sequences=8, n_threads=1)
    yield eng
    eng.close()


@dataclass
class Market:
    """Two hosts serving the bundled model: `cheap` (hostenv.host) and `dear` (test:6)."""

    env: HostEnv
    cheap: WorkerThread
    dear: WorkerThread

    def session(self, session_id: int) -> Any:
        return self.sdk().get_session_job_manager().get_session(session_id)

    def sdk(self, storage: Path | None = None) -> FabstirSDK:
        return self.env.client_sdk(CLIENT, storage)

    def session_count(self) -> int:
        return int(self.env.mk.sessionCount())


def _announce(env: HostEnv, host: Any, url: str, usdc_price: int) -> None:
    nodes = env.system.node_registry
    nodes.updateApiUrl(url, sender=host)
    nodes.setMinPrices([env.usdc.address], [usdc_price], sender=host)


@pytest.fixture
def market(
    hostenv: HostEnv,
    make_config: Callable[..., Any],
    engine: LlamaBatchEngine,
    second_engine: LlamaBatchEngine,
) -> Iterator[Market]:
    limits = Limits(max_tokens_per_request=256, receipt_timeout=10.0)
    cheap = WorkerThread(make_config(limits=limits), engine).start()
    dear_cfg = make_config(limits=limits, private_key=key_of(OTHER_HOST).key.hex())
    dear = WorkerThread(dear_cfg, second_engine).start()
    _announce(hostenv, hostenv.host, cheap.url, HOST_MIN_PRICE)
    _announce(hostenv, hostenv.other_host, dear.url, OTHER_HOST_PRICE)
    # Sessions of cents, so budgets and retirement show within a few requests.
    hostenv.mk.configureToken(hostenv.usdc, True, 1_000, sender=hostenv.deployer)
    yield Market(hostenv, cheap, dear)
    for w in (cheap, dear):
        w.stop()


class GatewayThread:
    """A Gateway on its own event loop in a thread (as `fabstir gateway` runs it)."""

    def __init__(self, sdk: FabstirSDK, store: Path, pool: PoolConfig, settings: ServerSettings):
        domain = sdk.receipt_domain()
        self.ledger = Ledger(
            store,
            chain_id=domain.chain_id,
            marketplace=domain.verifying_contract,
            wallet=str(sdk.address),
        )
        self.gateway = Gateway(SessionPool(sdk, self.ledger, pool), self.ledger, settings)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.gateway.start()
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            raise
        self._ready.set()
        await self._stop.wait()
        await self.gateway.stop()

    def start(self) -> GatewayThread:
        self._thread.start()
        assert self._ready.wait(60), "gateway did not start"
        if self.error is not None:
            raise self.error
        return self

    @property
    def url(self) -> str:
        return self.gateway.url

    def stop(self) -> None:
        if self._thread.is_alive() and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(120)
            assert not self._thread.is_alive(), "gateway did not stop"

    def client(self, **kw: Any) -> OpenAI:
        return OpenAI(base_url=self.url, api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


@pytest.fixture
def gateway(market: Market, tmp_path: Path) -> Iterator[Callable[..., GatewayThread]]:
    """`gateway(**PoolConfig overrides, settings=...)`: started, stopped at teardown."""
    started: list[GatewayThread] = []

    def start(settings: ServerSettings | None = None, **overrides: Any) -> GatewayThread:
        g = GatewayThread(
            market.sdk(tmp_path / "storage"),
            tmp_path / f"gateway-{len(started)}.db",
            replace(POOL, **overrides),
            settings or ServerSettings(port=0),
        )
        started.append(g)
        return g.start()

    yield start
    for g in started:
        g.stop()


def _settled(market: Market, session_id: int) -> Any:
    return wait_until(
        lambda: (
            info if (info := market.session(session_id)).status != SessionStatus.ACTIVE else None
        ),
        timeout=60,
    )


# ------------------------------------------------------------------ served and paid


def test_models_lists_what_hosts_serve_with_the_best_price(
    gateway: Callable[..., GatewayThread],
) -> None:
    listed = {m.id: m for m in gateway().client().models.list().data}
    assert MODEL in listed
    extra = listed[MODEL].model_extra or {}
    assert extra["fabstir"]["hosts"] == 2
    assert extra["fabstir"]["best_price_per_token"] == str(HOST_MIN_PRICE)


def test_one_session_serves_many_requests_and_usage_is_what_the_host_is_paid(
    market: Market, gateway: Callable[..., GatewayThread]
) -> None:
    g = gateway()
    client = g.client()
    before = market.session_count()
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12)
    assert plain.object == "chat.completion"
    assert plain.choices[0].message.role == "assistant"
    assert plain.choices[0].message.content
    assert plain.choices[0].finish_reason in ("stop", "length")
    assert 0 < plain.usage.completion_tokens <= 12

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[*HELLO, {"role": "assistant", "content": "Hi!"}, HELLO[0]],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    streamed = chunks[-1].usage
    assert chunks[-1].choices == [] and streamed is not None

    # A third request, by the catalogue alias, on the same session.
    alias = client.chat.completions.create(model=models.find().key, messages=HELLO, max_tokens=8)
    total = plain.usage.completion_tokens + streamed.completion_tokens
    total += alias.usage.completion_tokens
    assert market.session_count() == before + 1, "one session for every request"

    [session] = g.ledger.sessions()
    assert session.host == market.env.host.address, "the cheapest host serves by default"
    assert [r.completion_tokens for r in g.ledger.requests()] == [
        plain.usage.completion_tokens,
        streamed.completion_tokens,
        alias.usage.completion_tokens,
    ]
    g.stop()  # closes every session: the host settles its newest receipt
    info = _settled(market, session.session_id)
    assert info.status == SessionStatus.SETTLED
    assert info.tokens_used == total, "usage equals what the chain paid for"
    assert g.ledger.sessions()[0].state == "closed"


def test_concurrent_requests_share_a_few_sessions(
    market: Market, gateway: Callable[..., GatewayThread]
) -> None:
    g = gateway()
    before = market.session_count()

    async def many() -> list[Any]:
        client = AsyncOpenAI(base_url=g.url, api_key="unused", max_retries=0)
        async with client:
            return await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": f"Name a colour ({i})."}],
                        max_tokens=8,
                    )
                    for i in range(6)
                )
            )

    answers = asyncio.run(many())
    assert all(a.choices[0].message.content for a in answers)
    opened = market.session_count() - before
    assert 1 <= opened <= POOL.sessions_per_host
    assert len(g.ledger.requests()) == 6
    assert {s.host for s in g.ledger.sessions()} == {market.env.host.address}


def test_sse_is_openai_chunk_format_for_curl(gateway: Callable[..., GatewayThread]) -> None:
    g = gateway()
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 8, "stream": True}
    out = subprocess.run(
        [*CURL_POST, json.dumps(body), f"{g.url}/chat/completions"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    events = [line for line in out.split("\n\n") if line.strip()]
    assert all(e.startswith("data: ") for e in events), out
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert "usage" not in chunks[-1], "usage only when stream_options asks for it"


# ----------------------------------------------------------------------- refusals


def test_errors_are_openai_error_objects(gateway: Callable[..., GatewayThread]) -> None:
    client = gateway().client()
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no/such-model", messages=HELLO)
    assert missing.value.code == "model_not_found"
    for bad in (
        {"messages": []},
        {"messages": [{"role": "assistant", "content": "only me"}]},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": HELLO, "n": 2},
        {"messages": HELLO, "temperature": 3},
        {"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]},
        {"messages": HELLO, "max_tokens": 0},
    ):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, **bad)
    not_json = httpx.post(
        f"{client.base_url}chat/completions",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"


def test_a_chain_outage_is_503_chain_unavailable_never_a_bare_500(
    market: Market, tmp_path: Path
) -> None:
    """Found by the soak (issue 15): during an RPC outage a request whose model list had
    to be read from the chain got HTTP 500 without an error code."""
    with FaultProxy(market.env.rpc_url) as proxy:
        g = GatewayThread(
            _proxied_sdk(market, tmp_path, proxy.url),
            tmp_path / "gateway.db",
            replace(POOL, models_ttl=0.01),
            ServerSettings(port=0),
        ).start()
        try:
            proxy.fail_next(-1, status=503)  # the RPC is down for everyone
            with pytest.raises(openai.APIStatusError) as down:
                g.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
            assert down.value.status_code == 503
            assert down.value.code == "chain_unavailable"
            proxy.clear()  # back: the same gateway serves again
            reply = g.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
            assert reply.choices[0].message.content
        finally:
            proxy.clear()
            g.stop()


def test_a_close_during_a_chain_outage_is_retried_until_it_gets_through(
    market: Market, tmp_path: Path
) -> None:
    """Found by the soak (issue 15): a session closed while the RPC was down raised out
    of its background task ("exception was never retrieved") and the close was lost."""
    with FaultProxy(market.env.rpc_url) as proxy:
        g = GatewayThread(
            _proxied_sdk(market, tmp_path, proxy.url, rpc_retries=1),
            tmp_path / "gateway.db",
            replace(POOL, settle_timeout=2.0, close_retry_delay=0.5),
            ServerSettings(port=0),
        ).start()
        try:
            g.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
            [record] = g.ledger.sessions("open")
            proxy.fail_next(-1, status=503)
            assert g._loop is not None
            closing = asyncio.run_coroutine_threadsafe(
                g.gateway.pool._close_by_id(record.session_id), g._loop
            )
            threading.Event().wait(4.0)
            proxy.clear()
            closing.result(180)  # no exception escapes the close
            assert g.ledger.sessions("open") == []
            assert market.session(record.session_id).status != SessionStatus.ACTIVE
        finally:
            proxy.clear()
            g.stop()


def _proxied_sdk(
    market: Market, tmp_path: Path, rpc_url: str, *, rpc_retries: int = 6
) -> FabstirSDK:
    return market.env.client_sdk(
        CLIENT,
        tmp_path / "storage",
        rpc_url=rpc_url,
        rpc_retries=rpc_retries,  # 1: an outage shows at once, not after the backoff
    )


def test_api_key_is_required_when_configured(gateway: Callable[..., GatewayThread]) -> None:
    g = gateway(settings=ServerSettings(port=0, api_key="s3cret"))
    with pytest.raises(openai.AuthenticationError):
        g.client(api_key="wrong").models.list()
    missing = httpx.get(f"{g.url}/models", timeout=30)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert g.client(api_key="s3cret").models.list().data


def test_gateway_refuses_to_listen_off_loopback_without_a_key(market: Market) -> None:
    with pytest.raises(ValueError, match="API key"):
        Gateway(None, None, ServerSettings(listen="0.0.0.0"))  # type: ignore[arg-type]


def test_spent_budget_is_402_and_nothing_is_escrowed_beyond_it(
    market: Market, gateway: Callable[..., GatewayThread]
) -> None:
    # One 20-token session fits the budget; a second does not (16 tokens minimum).
    budget = 20 * HOST_MIN_PRICE + 10 * HOST_MIN_PRICE
    g = gateway(budget=budget, deposit=20 * HOST_MIN_PRICE, max_tokens=8)
    client = g.client()
    before = market.session_count()
    served = 0
    with pytest.raises(openai.APIStatusError) as refused:
        for _ in range(10):
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8)
            served += 1
    assert refused.value.status_code == 402
    assert refused.value.code == "insufficient_quota"
    assert served >= 1
    escrowed = sum(
        market.session(i).deposit_raw for i in range(before + 1, market.session_count() + 1)
    )
    assert 0 < escrowed <= budget


def test_a_model_no_running_host_serves_is_503_and_the_escrow_is_closed(
    market: Market, gateway: Callable[..., GatewayThread]
) -> None:
    g = gateway()
    before = market.session_count()
    with pytest.raises(openai.APIStatusError) as failed:
        g.client().chat.completions.create(model=OTHER_MODEL_NAME, messages=HELLO)
    assert failed.value.status_code == 503
    # Both hosts took the deposit on chain, then refused the model: both sessions closed.
    opened = range(before + 1, market.session_count() + 1)
    assert len(opened) == 2
    g.stop()
    for i in opened:
        assert _settled(market, i).tokens_used == 0
    assert {s.state for s in g.ledger.sessions()} == {"closed"}


# ------------------------------------------------------------------------- faults


def test_host_lost_mid_answer_is_502_paid_for_received_tokens_then_next_host_serves(
    market: Market, gateway: Callable[..., GatewayThread]
) -> None:
    env = market.env
    port = int(market.cheap.url.rsplit(":", 1)[1])
    proxy = TcpProxy("127.0.0.1", port)
    proxy.start()
    _announce(env, env.host, f"ws://127.0.0.1:{proxy.port}", HOST_MIN_PRICE)
    g = gateway(max_tokens=200)
    client = g.client()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        max_tokens=200,
        stream=True,
    )
    received = ""
    with pytest.raises(openai.APIError, match="mid-answer"):
        for chunk in stream:
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
            if received:
                proxy.stop()  # the host vanishes
    [lost] = g.ledger.sessions()
    assert lost.host == env.host.address

    served = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8)
    assert served.choices[0].message.content
    hosts = {s.session_id: s.host for s in g.ledger.sessions()}
    assert hosts[max(hosts)] == env.other_host.address, "the next request went elsewhere"

    sm = g.gateway.pool.session_manager
    got = sm.tokens_received(lost.session_id)
    signed = sm.latest_receipt(lost.session_id)
    assert signed is None or signed.tokens_used <= got, "never signs what it did not get"
    g.stop()
    info = market.session(lost.session_id)
    assert info.tokens_used <= got, "the host is paid for received tokens only"


def _write_deployment(env: HostEnv, where: Path) -> Path:
    contracts = {name: ContractRecord(address=a) for name, a in env.addresses.items()}
    write_deployment(
        Deployment(
            chain_id=int(env.chain.chain_id),
            network="test",
            deployer=env.deployer.address,
            contracts=contracts,
            params={},
            roles={},
        ),
        where,
    )
    return where


class GatewayProcess:
    """`fabstir gateway` as a child process (for kill -9)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [FABSTIR, *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            lambda: (
                "gateway listening" in self.log.read_bytes()[offset:].decode()
                or self.proc.poll() is not None
            ),  # type: ignore[union-attr]
            timeout=90,
        )
        assert self.proc.poll() is None, self.log.read_text()
        return self

    def text(self) -> str:
        return self.log.read_text()


def test_gateway_killed_and_restarted_closes_what_it_left_and_hosts_get_their_receipts(
    market: Market, tmp_path: Path
) -> None:
    env = market.env
    port = free_port()
    environ = {
        **os.environ,
        "FABSTIR_HOME": str(tmp_path / "home"),
        "FABSTIR_DEPLOYMENTS_DIR": str(_write_deployment(env, tmp_path / "deployments")),
    }
    args = [
        "gateway",
        "--network",
        env.rpc_url,
        "--account",
        f"test:{CLIENT}",
        "--budget",
        "1.0",
        "--deposit",
        "0.05",
        "--max-tokens",
        "24",
        "--proof-interval",
        "16",
        "--port",
        str(port),
    ]
    first = GatewayProcess(args, environ, tmp_path / "gateway.log").start()
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    for _ in range(2):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10)
    sid = market.session_count()
    assert first.proc is not None
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(30)
    assert market.session(sid).status == SessionStatus.ACTIVE, "killed: nothing was closed"

    second = GatewayProcess(args, environ, tmp_path / "gateway.log").start()
    assert f"closed 1 session(s) a previous run left open: [{sid}]" in second.text()
    info = _settled(market, sid)
    record = market.cheap.record(sid)
    assert info.tokens_used == record.receipt_tokens > 0, "paid the newest acknowledged receipt"

    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10)
    assert market.session_count() == sid + 1
    assert second.proc is not None
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(120) == 0
    assert _settled(market, sid + 1).status == SessionStatus.SETTLED

    spend = subprocess.run(
        [FABSTIR, "gateway", "spend", "--json", "--network", env.rpc_url, *ACCOUNT],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    record_of = json.loads(spend.stdout)
    assert [s["session_id"] for s in record_of["sessions"]] == [sid, sid + 1]
    assert {s["state"] for s in record_of["sessions"]} == {"closed"}
    assert len(record_of["requests"]) == 3
    paid = sum(market.session(i).tokens_used * HOST_MIN_PRICE for i in (sid, sid + 1))
    assert int(record_of["total_cost"]["USDC"]) == paid
