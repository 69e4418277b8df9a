"""Helpers for the host worker suite: the chain environment, workers on real loopback
sockets (in a thread, or as a child process), a TCP proxy, and a small protocol client.

The protocol client (`ProtocolClient`) is written against `fabstir.protocol` only
(messages, receipts, content hash chain), not against the SDK, so these tests pin the
wire protocol itself: every chunk's hash is recomputed from the received text and
every receipt is signed with the session key exactly as docs/protocol.md says.

Workers run in a thread with their own event loop (`WorkerThread`), so a test drives
clients with `asyncio.run(...)` and the chain with ape in the main thread, like real
separate processes. One engine is loaded per test module and shared by its workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import websockets
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from fabstir.host.config import HostConfig
from fabstir.host.worker import HostWorker
from fabstir.protocol.messages import (
    PROTOCOL_VERSION,
    Chunk,
    Close,
    End,
    ErrorMessage,
    Hello,
    Message,
    Ping,
    Pong,
    Prompt,
    ReceiptAck,
    ReceiptMessage,
    ReceiptRequest,
    SessionInit,
    SessionReady,
    parse_message,
)
from fabstir.protocol.receipts import ContentHasher, Eip712Domain, ReceiptSigner

T = TypeVar("T")

MNEMONIC = "test test test test test test test test test test test junk"
USDC_UNIT = 10**6
FEE_BPS = 1000
PRICE = 200  # 0.0002 USDC per token
DEPOSIT = 1_000_000  # 1 USDC -> 5000 tokens
PROOF_INTERVAL = 50
HOST_MIN_PRICE = 100
OTHER_MODEL = ("CohereForAI/TinyVicuna-1B-32k-GGUF", "tiny-vicuna-1b.q4_k_m.gguf")

Account.enable_unaudited_hdwallet_features()


def test_key(index: int) -> LocalAccount:
    """The private key of ape's test account `index` (anvil's mnemonic)."""
    return Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


def run(coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
    """asyncio.run with a hard timeout, so a hang fails the test instead of the suite."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)


# ------------------------------------------------------------------------ the chain


@dataclass
class Opened:
    session_id: int
    key: LocalAccount  # the session key (signs receipts)
    depositor: Any
    deposit: int
    price: int
    proof_interval: int


@dataclass
class HostEnv:
    system: Any
    deployer: Any
    curator: Any
    host: Any
    host_key: LocalAccount
    other_host: Any
    client: Any
    client2: Any
    model_id: bytes
    other_model_id: bytes
    rpc_url: str
    addresses: dict[str, str]
    chain: Any
    _keys: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def mk(self) -> Any:
        return self.system.marketplace

    @property
    def usdc(self) -> Any:
        return self.system.usdc

    def new_key(self) -> LocalAccount:
        return Account.from_key(keccak(text=f"host-suite session key {next(self._keys)}"))

    def open_session(
        self,
        *,
        deposit: int = DEPOSIT,
        price: int = PRICE,
        proof_interval: int = PROOF_INTERVAL,
        duration: int = 3600,
        depositor: Any = None,
        host: Any = None,
        model_id: bytes | None = None,
        key: LocalAccount | None = None,
    ) -> Opened:
        depositor = depositor or self.client
        key = key or self.new_key()
        self.mk.createSession(
            host or self.host,
            model_id or self.model_id,
            self.usdc,
            deposit,
            price,
            duration,
            proof_interval,
            key.address,
            sender=depositor,
        )
        sid = int(self.mk.sessionCount())
        return Opened(sid, key, depositor, deposit, price, proof_interval)

    @property
    def domain(self) -> Eip712Domain:
        return Eip712Domain(int(self.chain.chain_id), self.mk.address)

    def session(self, session_id: int) -> Any:
        return self.mk.getSession(session_id)

    def earnings(self) -> int:
        return int(self.system.host_earnings.balanceOf(self.host, self.usdc))

    def fees(self) -> int:
        return int(self.system.treasury.balanceOf(self.usdc))

    def balance(self, who: Any) -> int:
        return int(self.mk.balanceOf(who, self.usdc))


# ----------------------------------------------------------------------- the worker


class WorkerThread:
    """A HostWorker on its own event loop in a thread."""

    def __init__(self, config: HostConfig, engine: Any) -> None:
        self.config = config
        self.engine = engine
        self.worker: HostWorker | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._main, name="host-worker", daemon=True)

    def start(self, timeout: float = 60.0) -> WorkerThread:
        self.thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("worker did not start")
        if self.error is not None:
            raise self.error
        return self

    def _main(self) -> None:
        asyncio.run(self._amain())

    async def _amain(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.worker = HostWorker(self.config, engine=self.engine)
        try:
            await self.worker.start()
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            await self.worker.stop()
            return
        self._ready.set()
        await self._stop.wait()
        await self.worker.stop()

    @property
    def url(self) -> str:
        assert self.worker is not None
        return self.worker.url

    @property
    def http(self) -> str:
        assert self.worker is not None
        return f"http://127.0.0.1:{self.worker.port}"

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60.0) -> T:
        """Run a coroutine on the worker's loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)

    def record(self, session_id: int) -> Any:
        assert self.worker is not None and self.worker.store is not None
        store = self.worker.store
        return self.call(lambda: store.get(session_id))

    def stop(self, timeout: float = 120.0) -> None:
        if self.loop is not None and self._stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"


def http_get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text."""
    want = name + (
        "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
    )
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


# ------------------------------------------------------------------ protocol client


class HostRefused(Exception):
    def __init__(self, error: ErrorMessage) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


@dataclass
class Reply:
    id: str
    text: str = ""
    chunks: list[Chunk] = field(default_factory=list)
    end: End | None = None
    errors: list[ErrorMessage] = field(default_factory=list)
    requests: list[ReceiptRequest] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)

    @property
    def codes(self) -> list[str]:
        return [e.code for e in self.errors]


class ProtocolClient:
    """A minimal, strict client of docs/protocol.md (see the module docstring)."""

    _ids = itertools.count(1)

    def __init__(self, ws: Any, hello: Hello, version: int = PROTOCOL_VERSION) -> None:
        self.ws = ws
        self.hello = hello
        #: The protocol version this client speaks (and says in session_init).
        self.version = version
        #: Every frame received, as sent (to check the version of its field names).
        self.raw: list[str] = []
        self.domain = Eip712Domain(hello.chain_id, hello.marketplace)
        self.session_id: int | None = None
        self.signer: ReceiptSigner | None = None
        self.tokens = 0
        self.hasher = ContentHasher()
        self.signed: dict[int, str] = {}  # receipts this client signed: tokens -> hash
        self.acked = 0
        self.backlog: deque[Message] = deque()
        self.seen: list[Message] = []

    @classmethod
    async def connect(cls, url: str, version: int = PROTOCOL_VERSION) -> ProtocolClient:
        ws = await websockets.connect(url, max_size=None, open_timeout=20)
        first = parse_message(await asyncio.wait_for(ws.recv(), 20), sender="host")
        if isinstance(first, ErrorMessage):
            await ws.close()
            raise HostRefused(first)
        assert isinstance(first, Hello), first
        return cls(ws, first, version)

    async def reconnect(self, url: str, opened: Opened, **kw: Any) -> ProtocolClient:
        """A new connection resuming this client's session (keeps what it signed)."""
        new = await ProtocolClient.connect(url)
        new.signed = dict(self.signed)
        ready = await new.init(opened.session_id, opened.key, **kw)
        assert isinstance(ready, SessionReady), ready
        return new

    async def send(self, msg: Message) -> None:
        await self.ws.send(msg.to_json(self.version))

    async def send_raw(self, raw: str | bytes) -> None:
        await self.ws.send(raw)

    async def recv(self, timeout: float = 30.0) -> Message:
        if self.backlog:
            return self.backlog.popleft()
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        self.raw.append(raw)
        msg = parse_message(raw, sender="host")
        self.seen.append(msg)
        return msg

    async def expect(self, kind: type[T], timeout: float = 30.0) -> T:
        """The next frame that is a `kind` (pongs and receipt acks in between are kept)."""
        skipped: list[Message] = []
        try:
            while True:
                msg = await self.recv(timeout)
                if isinstance(msg, kind):
                    return msg
                if isinstance(msg, ReceiptAck):
                    self.acked = max(self.acked, msg.tokens_used)
                skipped.append(msg)
        finally:
            self.backlog.extendleft(reversed(skipped))

    async def error(self, timeout: float = 30.0) -> ErrorMessage:
        return await self.expect(ErrorMessage, timeout)

    async def ping(self, ts: int = 7) -> Pong:
        await self.send(Ping(ts=ts))
        while True:
            msg = await self.recv()
            if isinstance(msg, Pong) and msg.ts == ts:
                return msg

    async def init(
        self,
        session_id: int,
        key: LocalAccount,
        *,
        history: list[str] | None = None,
        signature: str | None = None,
    ) -> SessionReady | ErrorMessage:
        self.signer = ReceiptSigner(key.key, self.domain)
        sig = signature or self.signer.sign_session_init(session_id, self.hello.nonce)
        kwargs: dict[str, Any] = {"history": tuple(history)} if history else {}
        await self.send(SessionInit(session_id=session_id, signature=sig, v=self.version, **kwargs))
        msg = await self.recv()
        while isinstance(msg, Pong):
            msg = await self.recv()
        if isinstance(msg, SessionReady):
            self.session_id = session_id
            if msg.tokens_used:
                # Resuming: the host must continue from a receipt this client signed.
                assert self.signed.get(msg.tokens_used) == msg.content_hash, (
                    "host resumed from a state this client never signed"
                )
            self.tokens = msg.tokens_used
            self.hasher = ContentHasher(msg.content_hash)
            self.acked = msg.tokens_used
        return msg  # type: ignore[return-value]

    async def sign(self, tokens: int, content_hash: str) -> None:
        assert self.signer is not None and self.session_id is not None
        receipt = self.signer.sign(self.session_id, tokens, content_hash)
        self.signed[tokens] = receipt.content_hash
        await self.send(ReceiptMessage.from_receipt(receipt))

    async def wait_ack(self, tokens: int, reply: Reply | None = None, timeout: float = 30) -> None:
        while self.acked < tokens:
            msg = await self.recv(timeout)
            if isinstance(msg, ReceiptAck):
                self.acked = max(self.acked, msg.tokens_used)
                if reply is not None:
                    reply.acks.append(msg.tokens_used)
            elif isinstance(msg, ErrorMessage):
                raise AssertionError(f"error while waiting for an ack: {msg}")

    async def ask(
        self,
        text: str,
        max_tokens: int = 16,
        *,
        sign: bool = True,
        sign_every: int | None = None,
        id: str | None = None,
        stop_after: int | None = None,
        timeout: float = 60.0,
    ) -> Reply:
        """Send a prompt and read its answer, checking every hash. With `sign`, receipts
        are signed when asked, every `sign_every` tokens, and at the end (and acked).
        `stop_after`: return as soon as that many tokens arrived (for vanish tests)."""
        rid = id or f"p-{next(self._ids)}"
        reply = Reply(rid)
        await self.send(Prompt(id=rid, text=text, max_tokens=max_tokens))
        folded = False
        states = {(self.tokens, self.hasher.hexdigest)}
        last_signed = max(self.signed, default=0)
        while True:
            msg = await self.recv(timeout)
            if isinstance(msg, Chunk | End) and msg.id == rid and not folded:
                self.hasher.update_prompt(text)
                folded = True
            if isinstance(msg, Chunk):
                assert msg.id == rid
                self.hasher.update_chunk(msg.text)
                assert msg.content_hash == self.hasher.hexdigest, "chunk hash mismatch"
                assert msg.tokens_used >= self.tokens
                self.tokens = msg.tokens_used
                states.add((msg.tokens_used, msg.content_hash))
                reply.chunks.append(msg)
                reply.text += msg.text
                if sign and sign_every and self.tokens - last_signed >= sign_every:
                    await self.sign(self.tokens, self.hasher.hexdigest)
                    last_signed = self.tokens
                if stop_after is not None and self.tokens >= stop_after:
                    return reply
            elif isinstance(msg, ReceiptRequest):
                assert (msg.tokens_used, msg.content_hash) in states, "request for an unseen state"
                reply.requests.append(msg)
                if sign and msg.tokens_used > last_signed:
                    await self.sign(msg.tokens_used, msg.content_hash)
                    last_signed = msg.tokens_used
            elif isinstance(msg, ReceiptAck):
                self.acked = max(self.acked, msg.tokens_used)
                reply.acks.append(msg.tokens_used)
            elif isinstance(msg, ErrorMessage):
                reply.errors.append(msg)
                if msg.id == rid and not folded:
                    return reply  # refused before it started: not part of the transcript
            elif isinstance(msg, End):
                assert msg.id == rid
                assert msg.content_hash == self.hasher.hexdigest, "end hash mismatch"
                assert msg.tokens_used >= self.tokens
                self.tokens = msg.tokens_used
                reply.end = msg
                break
        if reply.end is not None and reply.end.finish_reason in ("error", "budget"):
            with contextlib.suppress(TimeoutError):
                reply.errors.append(await self.error(timeout=2 if sign else timeout))
        if sign and self.tokens > last_signed:
            await self.sign(self.tokens, self.hasher.hexdigest)
        if sign and self.tokens > self.acked:
            await self.wait_ack(self.tokens, reply)
        return reply

    async def close_session(self) -> None:
        assert self.session_id is not None
        await self.send(Close(session_id=self.session_id))
        with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
            while True:
                await self.recv(timeout=10)

    async def abort(self) -> None:
        """Vanish: drop the TCP connection without a closing handshake."""
        self.ws.transport.abort()
        with contextlib.suppress(Exception):
            await self.ws.wait_closed()

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


async def connect(url: str) -> ProtocolClient:
    return await ProtocolClient.connect(url)


async def start_session(url: str, opened: Opened, **kw: Any) -> ProtocolClient:
    client = await ProtocolClient.connect(url)
    ready = await client.init(opened.session_id, opened.key, **kw)
    assert isinstance(ready, SessionReady), ready
    return client


# ------------------------------------------------------------- subprocess and proxy


class WorkerProcess:
    """`python -m fabstir.host` as a child process (for kill -9)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 90.0) -> WorkerProcess:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fabstir.host", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            m = re.search(r"event=ready url=(ws://\S+)", text)
            if m:
                self.url = m[1]
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.1)
        raise AssertionError("worker did not become ready:\n" + self.log_path.read_text())

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


class TcpProxy:
    """A loopback TCP proxy that can be stopped (refusing connections, cutting open
    ones) and started again on the same port: an RPC endpoint going away and back."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def write_key_file(path: Path, key: LocalAccount) -> Path:
    path.write_text(key.key.hex() + "\n")
    os.chmod(path, 0o600)
    return path


def addresses_file(path: Path, addresses: dict[str, str]) -> Path:
    path.write_text(json.dumps(addresses))
    return path
