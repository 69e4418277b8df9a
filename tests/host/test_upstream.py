"""The worker in front of a real OpenAI-compatible server: llama-cpp-python's own server
(`python -m llama_cpp.server`) on the bundled model, as a separate process on a free
loopback port. Through the worker with the SDK and the protocol client: a paid session
settled on anvil, the unsigned-token cap (held-back tokens, the upstream request closed
when no receipt comes), a client vanishing mid-answer, the upstream killed and
restarted, a slow and a stalled upstream, concurrent sessions, the model identity
checks, the context window and the token counts."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.host_env import PRICE, HostEnv
from support.protocol_client import ProtocolClient, start_session
from support.tcp_proxy import TcpProxy
from support.waits import run, wait_until
from support.worker import WorkerThread, http_get, metric

from fabstir import models
from fabstir.chain.local import free_port
from fabstir.host.config import HostConfig, Limits
from fabstir.host.engines.base import ModelVerificationError
from fabstir.host.engines.upstream import UpstreamEngine, UpstreamSettings, connect
from fabstir.host.metrics import HostMetrics
from fabstir.sdk.errors import SDKErrorCode
from fabstir.sdk.types import SessionStatus

pytestmark = pytest.mark.usefixtures("hostenv")

ALIAS = "smollm2-upstream"
LONG = "Write a long story about a lighthouse keeper, with many details."
#: An answer that runs for seconds (longer than a receipt timeout) on the upstream.
ENDLESS = "List 500 different animals, one per line, numbered."


class LlamaServer:
    """`python -m llama_cpp.server` on the bundled model; its log is kept for the
    upstream's side of a cancel ("Disconnected from client")."""

    def __init__(self, model: Path, log: Path, *, alias: str | None = ALIAS) -> None:
        self.model = model
        self.log_path = log
        self.alias = alias
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LlamaServer:
        args = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
            "--host", "127.0.0.1", "--port", str(self.port), "--n_threads", "1",
            "--n_ctx", "1024", "--interrupt_requests", "False",
        ]  # fmt: skip
        if self.alias:
            args += ["--model_alias", self.alias]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(self._up, timeout=60, step=0.2)
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited: {self.log()[-2000:]}")
        try:
            return http_get(self.url + "/v1/models")[0] == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def disconnects(self) -> int:
        return self.log().count("Disconnected from client")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


class ThrottledProxy(TcpProxy):
    """A TcpProxy whose upstream -> worker direction can be slowed or stalled."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self.delay = 0.0
        self.flowing = threading.Event()
        self.flowing.set()

    def _chunk_size(self, from_target: bool) -> int:
        # Small reads from the upstream, so a delay holds back every few tokens.
        return 256 if from_target else super()._chunk_size(from_target)

    def _before_forward(self, from_target: bool) -> None:
        if from_target:
            self.flowing.wait()
            time.sleep(self.delay)


@pytest.fixture(scope="module")
def upstream(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = LlamaServer(model_path, tmp_path_factory.mktemp("upstream") / "server.log").start()
    yield server
    server.stop()


@pytest.fixture
def up_config(
    make_config: Callable[..., HostConfig], upstream: LlamaServer
) -> Callable[..., HostConfig]:
    def make(url: str | None = None, **overrides: Any) -> HostConfig:
        base: dict[str, Any] = dict(
            engine="upstream",
            upstream_url=(url or upstream.url) + "/v1",
            upstream_model=ALIAS,
            upstream_attested=True,
            upstream_read_timeout=20.0,
            n_ctx=1024,  # the server's window (llama-cpp-python's server does not say it)
        )
        base.update(overrides)
        return make_config(**base)

    return make


@pytest.fixture
def up_worker(up_config: Callable[..., HostConfig]) -> Iterator[Callable[..., WorkerThread]]:
    started: list[WorkerThread] = []

    def start(config: HostConfig | None = None, **overrides: Any) -> WorkerThread:
        w = WorkerThread(config or up_config(**overrides), engine=None)
        started.append(w)
        return w.start()

    yield start
    for w in started:
        w.stop()


def engine_of(w: WorkerThread) -> UpstreamEngine:
    assert w.worker is not None and isinstance(w.worker.engine, UpstreamEngine)
    return w.worker.engine


def health(w: WorkerThread) -> dict[str, Any]:
    return dict(json.loads(http_get(w.http + "/health")[2]))


def settled(w: WorkerThread, session_id: int) -> Any:
    rec = w.record(session_id)
    return rec if rec is not None and rec.state == "settled" else None


# --------------------------------------------------------------------------- a paid session


def test_paid_session_through_the_upstream_with_the_sdk(
    hostenv: HostEnv, up_worker: Callable[..., WorkerThread], upstream: LlamaServer, tmp_path: Path
) -> None:
    w = up_worker()
    h = health(w)
    assert h["status"] == "ok" and h["engine"]["engine"] == "upstream"
    assert h["engine"]["identity"] == "operator-attested" and h["engine"]["tokenizer"] == "text"
    sdk = hostenv.client_sdk(8, tmp_path / "storage")
    sessions = sdk.get_session_manager()
    config = {"deposit_amount": "1.0", "price_per_token": PRICE, "duration": 3600,
              "proof_interval": 16}  # fmt: skip
    before = hostenv.balance(hostenv.client)
    requests_before = upstream.log().count("POST /v1/chat/completions")

    async def scenario() -> tuple[Any, list[Any], str]:
        started = await sessions.start_session(
            "0x" + hostenv.model_id.hex(), hostenv.host.address, config, w.url
        )
        chunks = [
            c async for c in sessions.send_prompt_streaming(started.session_id, LONG, max_tokens=40)
        ]
        second = await sessions.send_prompt(started.session_id, "Thanks!", max_tokens=8)
        result = await sessions.complete_session(started.session_id)
        return result, chunks, second

    result, chunks, second = run(scenario(), timeout=300)
    counts = [c.tokens for c in chunks]
    assert counts == sorted(counts) and counts[-1] > 16 and second
    assert result.status == SessionStatus.SETTLED and result.settled_by_host
    # Exact metering: the chain paid for what the client received and signed, no more.
    info = hostenv.session(result.session_id)
    assert info.tokensUsed == result.tokens_used == sessions.tokens_received(result.session_id)
    assert hostenv.balance(hostenv.client) == before - result.tokens_used * PRICE
    assert upstream.log().count("POST /v1/chat/completions") - requests_before == 2
    body = http_get(w.http + "/metrics")[2]
    assert metric(body, "fabstir_host_tokens_served_total") == result.tokens_used
    assert metric(body, "fabstir_host_first_token_latency_seconds_count") == 2
    assert metric(body, "fabstir_host_upstream_errors_total") == 0


def test_concurrent_sessions_share_the_upstream(
    hostenv: HostEnv, up_worker: Callable[..., WorkerThread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="fabstir.host")
    w = up_worker(upstream_max_concurrent=2)
    opened = [hostenv.open_session(proof_interval=64) for _ in range(3)]

    async def one(o: Any) -> int:
        client = await start_session(w.url, o)
        reply = await client.ask("Name three colours.", max_tokens=16)
        assert reply.end is not None and not reply.errors
        await client.close_session()
        return client.tokens

    async def all_three() -> list[int]:
        return list(await asyncio.gather(*(one(o) for o in opened)))

    tokens = run(all_three(), timeout=300)
    engine = engine_of(w)
    assert engine.peak_in_flight == 2  # the third waited for a free upstream request
    for o, n in zip(opened, tokens, strict=True):
        rec = wait_until(lambda o=o: settled(w, o.session_id), timeout=60)
        assert rec.receipt_tokens == n == hostenv.session(o.session_id).tokensUsed > 0
    # The worker says what it does, one line per event, and never what was said.
    for event in ("session_ready", "prompt_served", "receipt", "session_settled"):
        assert caplog.text.count(f"event={event} ") >= 3, event
    assert "colours" not in caplog.text.lower()


# --------------------------------------------------------------------------- the cap


def test_tokens_past_the_cap_are_held_back_and_the_upstream_request_cancelled(
    hostenv: HostEnv, up_worker: Callable[..., WorkerThread], upstream: LlamaServer
) -> None:
    w = up_worker(limits=Limits(max_tokens_per_request=900, receipt_timeout=1.0))
    opened = hostenv.open_session(proof_interval=8)
    disconnects = upstream.disconnects()

    async def scenario() -> Any:
        client = await start_session(w.url, opened)
        reply = await client.ask(ENDLESS, max_tokens=900, sign=False)
        await client.aclose()
        return client, reply

    client, reply = run(scenario(), timeout=120)
    # Exactly one interval was streamed unsigned; the next token was held back, the
    # receipt asked for, and when none came the answer ended.
    assert reply.requests and reply.requests[0].tokens_used == 8
    assert client.tokens == 8 and reply.end is not None and reply.end.finish_reason == "error"
    assert SDKErrorCode.RECEIPT_REQUIRED.value in reply.codes
    # ...and the upstream request was closed, which the upstream saw.
    wait_until(lambda: upstream.disconnects() > disconnects, timeout=10)
    assert engine_of(w).cancelled == 1 and engine_of(w).in_flight == 0
    assert metric(http_get(w.http + "/metrics")[2], "fabstir_host_upstream_cancelled_total") == 1


def test_a_client_vanishing_mid_answer_cancels_the_upstream_request(
    hostenv: HostEnv, up_worker: Callable[..., WorkerThread], upstream: LlamaServer
) -> None:
    w = up_worker(limits=Limits(max_tokens_per_request=300))
    opened = hostenv.open_session(proof_interval=500)
    disconnects = upstream.disconnects()

    async def scenario() -> ProtocolClient:
        client = await start_session(w.url, opened)
        await client.ask(LONG, max_tokens=300, stop_after=4)
        await client.abort()
        return client

    run(scenario(), timeout=120)
    wait_until(lambda: upstream.disconnects() > disconnects, timeout=10)
    wait_until(lambda: engine_of(w).in_flight == 0, timeout=10)
    # From the upstream's side too: it stopped generating at once. Its one model is
    # busy for seconds with a 300-token answer (requests queue behind it), yet a short
    # request right after is answered quickly.
    body = {"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    started = time.monotonic()
    resp = httpx.post(upstream.url + "/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200 and time.monotonic() - started < 3


# --------------------------------------------------------------------------- faults


def test_upstream_killed_mid_stream_and_restarted(
    hostenv: HostEnv,
    up_config: Callable[..., HostConfig],
    up_worker: Callable[..., WorkerThread],
    model_path: Path,
    tmp_path: Path,
) -> None:
    own = LlamaServer(model_path, tmp_path / "own.log").start()
    try:
        w = up_worker(up_config(own.url, limits=Limits(max_tokens_per_request=300)))
        opened = hostenv.open_session(proof_interval=500)

        async def scenario() -> tuple[ProtocolClient, dict[str, Any]]:
            client = await start_session(w.url, opened)
            ok = await client.ask("Say hello.", max_tokens=6)
            assert ok.end is not None and not ok.errors
            killer = asyncio.get_running_loop().call_later(1.0, own.kill)
            try:
                cut = await client.ask(LONG, max_tokens=300)
            finally:
                killer.cancel()
            assert cut.end is not None and cut.end.finish_reason == "error"
            assert SDKErrorCode.SERVICE_UNAVAILABLE.value in cut.codes
            acked = client.acked
            assert acked > 0 and w.record(opened.session_id).receipt_tokens == acked
            seen = {"down": await asyncio.to_thread(health, w)}
            down = await client.ask("Still there?", max_tokens=6)
            assert SDKErrorCode.SERVICE_UNAVAILABLE.value in down.codes
            await asyncio.to_thread(own.start)  # the same port: found again by the probe
            await asyncio.to_thread(wait_until, lambda: health(w)["status"] == "ok", timeout=30)
            again = await client.ask("Say goodbye.", max_tokens=6)
            assert again.end is not None and not again.errors
            await client.close_session()
            return client, seen

        client, seen = run(scenario(), timeout=240)
        assert seen["down"]["status"] == "degraded" and seen["down"]["engine"]["ok"] is False
        rec = wait_until(lambda: settled(w, opened.session_id), timeout=60)
        assert rec.receipt_tokens == client.tokens == hostenv.session(opened.session_id).tokensUsed
    finally:
        own.stop()


def test_slow_and_stalled_upstream(
    hostenv: HostEnv,
    up_config: Callable[..., HostConfig],
    up_worker: Callable[..., WorkerThread],
    upstream: LlamaServer,
) -> None:
    proxy = ThrottledProxy("127.0.0.1", upstream.port)
    proxy.start()
    try:
        w = up_worker(up_config(proxy.url, upstream_read_timeout=4.0))
        opened = hostenv.open_session(proof_interval=500)
        proxy.delay = 0.05  # slow: every 256 bytes (about two events) 50 ms late

        async def scenario() -> None:
            client = await start_session(w.url, opened)
            reply = await client.ask("Name a river.", max_tokens=12)
            assert reply.end is not None and not reply.errors and client.tokens > 0
            assert (await asyncio.to_thread(health, w))["status"] == "ok"

            proxy.delay = 0.0
            proxy.flowing.clear()  # stalled: nothing arrives for longer than the read timeout
            cut = await client.ask("Name a lake.", max_tokens=12)
            assert SDKErrorCode.SERVICE_UNAVAILABLE.value in cut.codes
            assert (await asyncio.to_thread(health, w))["engine"]["ok"] is False
            proxy.flowing.set()
            await asyncio.to_thread(wait_until, lambda: health(w)["status"] == "ok", timeout=30)
            again = await client.ask("Name a sea.", max_tokens=8)
            assert again.end is not None and not again.errors
            await client.aclose()

        run(scenario(), timeout=180)
    finally:
        proxy.flowing.set()
        proxy.stop()


# --------------------------------------------------------------------------- identity


def test_model_identity_is_checked_against_the_upstream(
    hostenv: HostEnv,
    up_config: Callable[..., HostConfig],
    upstream: LlamaServer,
    model_path: Path,
    tmp_path: Path,
) -> None:
    entry = models.find()

    async def check(url: str, model: str, sha256: str, attested: bool) -> str:
        engine = await connect(
            UpstreamSettings(url, model),
            registry_sha256=sha256,
            attested=attested,
            n_ctx=None,
            default_n_ctx=1024,
        )
        await engine.aclose()
        return engine.identity

    # An alias hides the file: only an explicit attestation lets it serve.
    with pytest.raises(ModelVerificationError) as info:
        asyncio.run(check(upstream.url, ALIAS, entry.sha256, False))
    assert info.value.code is SDKErrorCode.MODEL_VALIDATION_FAILED
    assert asyncio.run(check(upstream.url, ALIAS, entry.sha256, True)) == "operator-attested"
    with pytest.raises(ModelVerificationError) as info:
        asyncio.run(check(upstream.url, "another-model", entry.sha256, True))
    assert info.value.code is SDKErrorCode.MODEL_NOT_FOUND

    # Without an alias llama.cpp's server names the model by its file: checked by sha256.
    plain = LlamaServer(model_path, tmp_path / "plain.log", alias=None).start()
    try:
        assert asyncio.run(check(plain.url, str(model_path), entry.sha256, False)) == "sha256"
        with pytest.raises(ModelVerificationError) as info:
            asyncio.run(check(plain.url, str(model_path), "ab" * 32, True))
        assert info.value.code is SDKErrorCode.INVALID_MODEL_HASH
        # The worker with such an upstream serves, and says how it knows.
        w = WorkerThread(
            up_config(plain.url, upstream_model=str(model_path), upstream_attested=False), None
        ).start()
        try:
            assert health(w)["engine"]["identity"] == "sha256"
        finally:
            w.stop()
    finally:
        plain.stop()


# --------------------------------------------------------------------------- window, counts


def test_prompt_too_long_for_the_upstream_window(
    hostenv: HostEnv, up_worker: Callable[..., WorkerThread]
) -> None:
    # Fitted with the upstream's tokenizer: a prompt beyond the window is refused
    # before anything is generated; one that fits is served.
    w = up_worker(upstream_n_ctx=256)
    engine = engine_of(w)
    assert engine.n_ctx == 256 and engine.count_tokens("Hello world") == 2
    opened = hostenv.open_session(proof_interval=500)

    async def scenario() -> tuple[Any, Any]:
        client = await start_session(w.url, opened)
        too_long = await client.ask("word " * 400, max_tokens=8)
        fits = await client.ask("Say yes.", max_tokens=4)
        await client.aclose()
        return too_long, fits

    too_long, fits = run(scenario(), timeout=120)
    assert too_long.codes == [SDKErrorCode.PROMPT_TOO_LARGE.value] and too_long.end is None
    assert fits.end is not None and not fits.errors


def test_upstream_too_long_answer_maps_to_prompt_too_large(
    hostenv: HostEnv, up_worker: Callable[..., WorkerThread]
) -> None:
    # The worker believes in a larger window than the upstream's 1024 (a wrong
    # --upstream-n-ctx): the upstream's own refusal becomes PROMPT_TOO_LARGE.
    w = up_worker(upstream_n_ctx=100_000)
    opened = hostenv.open_session(proof_interval=500)

    async def scenario() -> Any:
        client = await start_session(w.url, opened)
        reply = await client.ask("word " * 1500, max_tokens=8)
        await client.aclose()
        return reply

    reply = run(scenario(), timeout=120)
    assert SDKErrorCode.PROMPT_TOO_LARGE.value in reply.codes
    assert health(w)["engine"]["ok"] is True  # a refusal is not an outage


def test_count_mismatch_is_logged_counted_and_never_billed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = HostMetrics()
    engine = UpstreamEngine(
        UpstreamSettings("http://127.0.0.1:9", "m"),
        n_ctx=1024,
        tokenizer="none",
        identity="operator-attested",
        metrics=metrics,
    )
    with caplog.at_level("WARNING", logger="fabstir.host.engines.upstream"):
        engine._reconcile(delivered=10, usage=12)
        engine._reconcile(delivered=10, usage=9)
        engine._reconcile(delivered=10, usage=10)
        engine._reconcile(delivered=10, usage=None)
    text = metrics.render()
    assert 'fabstir_host_upstream_count_mismatch_total{direction="upstream_higher"} 1.0' in text
    assert 'fabstir_host_upstream_count_mismatch_total{direction="upstream_lower"} 1.0' in text
    assert caplog.text.count("event=upstream_count_mismatch") == 2
    assert "billed=10" in caplog.text
    asyncio.run(engine.aclose())


def test_upstream_configuration_is_checked(
    make_config: Callable[..., HostConfig], tmp_path: Path
) -> None:
    from fabstir.host.config import ConfigError
    from fabstir.host.engines.upstream import ENV_UPSTREAM_KEY, read_api_key

    with pytest.raises(ConfigError, match="upstream-url"):
        make_config(engine="upstream")
    with pytest.raises(ConfigError):
        make_config(engine="upstream", upstream_url="http://x", upstream_model="m",
                    upstream_max_concurrent=0)  # fmt: skip
    key = tmp_path / "upstream.key"
    key.write_text("sk-test\n")
    assert read_api_key(key, {}) == "sk-test"
    assert read_api_key(None, {ENV_UPSTREAM_KEY: "sk-env"}) == "sk-env"
    assert read_api_key(None, {}) is None
    with pytest.raises(ConfigError):
        read_api_key(tmp_path / "missing", {})
