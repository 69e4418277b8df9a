"""WebSocket sessions and the small HTTP surface of the host worker.

One `websockets` asyncio server serves both:

* HTTP GET `/health`, `/v1/models`, `/metrics` (answered in `process_request`,
  before any WebSocket handshake);
* WebSocket connections on any other path, one session each
  (docs/protocol.md): `hello` -> `session_init` (checked on chain and signed
  with the session key) -> `session_ready` -> prompts, receipts, cancel, ping,
  close.

Each connection runs one reader loop and at most one generation task. Every
bad frame gets an `error` frame with its code; an exception in one
connection's handler is logged and answered with INTERNAL_ERROR, never
propagated to the server or to another connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from fabstir.chain.client import ChainError, ChainUnavailable
from fabstir.errors import SDKError, SDKErrorCode
from fabstir.host.chain import HostChain, SessionRejected, check_servable
from fabstir.host.config import HostConfig
from fabstir.host.engines.base import Engine
from fabstir.host.metrics import HostMetrics, kv
from fabstir.host.session import GENESIS_HEX, ServeContext, ServedSession, history_turns
from fabstir.host.store import SessionRecord, SessionStore, SessionTerms
from fabstir.protocol.messages import (
    PROTOCOL_VERSION,
    Cancel,
    Close,
    ErrorMessage,
    Hello,
    Message,
    Ping,
    Pong,
    Prompt,
    ProtocolError,
    ReceiptAck,
    ReceiptMessage,
    ReceiptRequest,
    SessionInit,
    SessionReady,
    new_nonce,
    parse_message,
)
from fabstir.protocol.receipts import (
    Eip712Domain,
    InvalidSignatureError,
    Receipt,
    recover_session_init_signer,
    same_address,
)

log = logging.getLogger(__name__)

#: WebSocket close codes used by the host.
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TRY_AGAIN: Final = 1013
#: How long a kicked connection gets to finish what it is doing.
_TERMINATE_WAIT: Final = 5.0


@dataclass(frozen=True)
class ModelInfo:
    """What the worker serves, as /v1/models and hello announce it."""

    model_id: str
    name: str
    file: str
    sha256: str
    n_ctx: int


def _acked(receipt: Receipt | None) -> tuple[int, str]:
    """The (tokens, content hash) a stored receipt acknowledges; none: the start."""
    return (0, GENESIS_HEX) if receipt is None else (receipt.tokens_used, receipt.content_hash)


class HostServer:
    """Session registry, WebSocket connections and HTTP endpoints."""

    def __init__(
        self,
        *,
        config: HostConfig,
        engine: Engine,
        store: SessionStore,
        chain: HostChain,
        metrics: HostMetrics,
        domain: Eip712Domain,
        model: ModelInfo,
        health: Callable[[], Awaitable[dict[str, Any]]],
        refresh_metrics: Callable[[], Awaitable[None]],
        on_session_closing: Callable[[], None],
    ) -> None:
        self.config = config
        self.limits = config.limits
        self.engine = engine
        self.store = store
        self.chain = chain
        self.metrics = metrics
        self.domain = domain
        self.model = model
        self.address = chain.address
        self._health = health
        self._refresh_metrics = refresh_metrics
        self._on_session_closing = on_session_closing
        self.sessions: dict[int, ServedSession] = {}
        self.connections: set[Connection] = set()
        self._per_ip: Counter[str] = Counter()
        self._per_wallet: Counter[str] = Counter()
        self._server: Server | None = None
        self.accepting = True

    # -- lifecycle

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.config.bind_host,
            self.config.port,
            process_request=self._http,
            # Frames up to 2x the protocol limit are read and answered with
            # MESSAGE_TOO_LARGE; larger ones close the connection (1009).
            max_size=2 * self.limits.max_frame_bytes,
            compression=None,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=5,
            server_header=f"fabstir-host/{PROTOCOL_VERSION}",
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        for sock in self._server.sockets:
            return int(sock.getsockname()[1])
        raise RuntimeError("the server has no socket")

    @property
    def url(self) -> str:
        return f"ws://{self.config.bind_host}:{self.port}"

    async def shutdown(self) -> None:
        """Stop accepting, end every connection with SERVICE_UNAVAILABLE, stop listening."""
        self.accepting = False
        await asyncio.gather(
            *(
                c.terminate(SDKErrorCode.SERVICE_UNAVAILABLE, "the host is shutting down")
                for c in list(self.connections)
            ),
            return_exceptions=True,
        )
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()

    # -- sessions

    def is_connected(self, session_id: int) -> bool:
        s = self.sessions.get(session_id)
        return s is not None and s.owner is not None

    async def end_session(self, session_id: int, code: SDKErrorCode, message: str) -> None:
        """The session is being settled (expiry, close requested on chain, idle):
        end its connection, if any, and forget its serving state."""
        s = self.sessions.pop(session_id, None)
        if s is None:
            return
        s.closed = True
        owner = s.owner
        if isinstance(owner, Connection):
            await owner.terminate(code, message)

    async def open_session(self, init: SessionInit, nonce: str, conn: Connection) -> ServedSession:
        """Check a session_init (chain, signature, local state) and attach the session to
        `conn`. Raises SDKError with the code for the error frame."""
        sid = init.session_id
        try:
            onchain, now = await self.chain.session_and_time(sid)
        except ChainUnavailable:
            # A session this host already serves can still be wound up: its terms and
            # newest receipt are in the store, and settling is the loop's job (it
            # retries until the chain answers). Anything else must wait for the chain.
            return await self._open_offline(init, nonce, conn)
        session = check_servable(
            onchain,
            session_id=sid,
            host=self.address,
            model_id=self.model.model_id,
            now=now + self.config.expiry_margin,
        )
        self._check_init_signer(init, nonce, session.signer)
        self._check_still_open(sid, await self.store.get(sid))
        terms = SessionTerms(
            session_id=sid,
            client=session.depositor,
            session_key=session.signer,
            token=session.token,
            price=session.price,
            max_tokens=session.max_tokens,
            proof_interval=session.proof_interval,
            ends_at=session.ends_at,
        )
        record = await self.store.register(terms)
        acked = _acked(record.receipt)
        if session.tokens_used > acked[0]:
            # The chain holds a newer receipt than this host stored (submitted by the
            # client, or the host lost its database): continue from that one.
            content_hash = await self.chain.checkpoint_hash(sid, session.tokens_used)
            if content_hash is None:
                raise SessionRejected(
                    SDKErrorCode.INVALID_SESSION_STATE,
                    f"session {sid}: the chain's receipt for {session.tokens_used} tokens "
                    "cannot be found",
                )
            acked = (session.tokens_used, content_hash)
            await self.store.set_submitted(sid, session.tokens_used)
        served, resumed = await self._attach(terms, acked, init, conn, offline=False)
        log.info(
            kv(
                "session_ready",
                session=sid,
                client=session.depositor,
                tokens=acked[0],
                max_tokens=session.max_tokens,
                proof_interval=session.proof_interval,
                resumed=resumed,
                peer=conn.peer,
            )
        )
        return served

    async def _open_offline(self, init: SessionInit, nonce: str, conn: Connection) -> ServedSession:
        """session_init while the chain is unreachable: admitted for receipts and `close`
        only (`ServedSession.offline`; prompts get SERVICE_UNAVAILABLE), when the session
        is open in the store and the init is signed by its stored session key. Without
        this, a client closing during an outage was turned away and its session waited
        for the idle timeout."""
        sid = init.session_id
        record = await self.store.get(sid)
        if record is None:
            raise SDKError(
                SDKErrorCode.SERVICE_UNAVAILABLE, "the host cannot reach its chain; retry later"
            )
        self._check_still_open(sid, record)
        self._check_init_signer(init, nonce, record.session_key)
        terms = record.terms
        acked = _acked(record.receipt)
        served, _ = await self._attach(terms, acked, init, conn, offline=True)
        log.warning(kv("session_ready_offline", session=sid, tokens=acked[0], peer=conn.peer))
        return served

    def _check_init_signer(self, init: SessionInit, nonce: str, session_key: str) -> None:
        try:
            signer = recover_session_init_signer(
                self.domain, init.session_id, nonce, init.signature
            )
        except InvalidSignatureError as exc:
            raise SDKError(SDKErrorCode.INVALID_PROOF, exc.message) from None
        if not same_address(signer, session_key):
            raise SDKError(
                SDKErrorCode.WRONG_SIGNER,
                f"session_init signed by {signer}, not the session key {session_key}",
            )

    @staticmethod
    def _check_still_open(sid: int, record: SessionRecord | None) -> None:
        if record is not None and record.state != "open":
            raise SessionRejected(
                SDKErrorCode.INVALID_SESSION_STATE,
                f"session {sid} is {record.state} on this host; open a new session",
            )

    async def _attach(
        self,
        terms: SessionTerms,
        acked: tuple[int, str],
        init: SessionInit,
        conn: Connection,
        *,
        offline: bool,
    ) -> tuple[ServedSession, str | None]:
        """Serve `terms` on `conn` from the acknowledged receipt, taking the session over
        from an older connection. Returns the session and where its state came from."""
        sid = terms.session_id
        served = self.sessions.get(sid)
        if served is not None:
            previous = served.owner
            if isinstance(previous, Connection) and previous is not conn:
                await previous.terminate(
                    SDKErrorCode.INVALID_SESSION_STATE,
                    "the session was resumed on a new connection",
                )
            served.terms = terms
            served.rollback(*acked)
            resumed: str | None = "memory"
        else:
            served = ServedSession(
                terms, acked_tokens=acked[0], acked_hash=acked[1], turns=history_turns(init.history)
            )
            self.sessions[sid] = served
            resumed = "history" if init.history else ("receipt" if acked[0] else None)
        served.offline = offline
        served.owner = conn
        return served, resumed

    async def close_session(self, s: ServedSession, reason: str) -> None:
        """Client closed: mark it for settlement and wake the settlement loop."""
        s.closed = True
        if self.sessions.get(s.session_id) is s:
            del self.sessions[s.session_id]
        if await self.store.mark_closing(s.session_id, reason):
            log.info(
                kv("session_closing", session=s.session_id, reason=reason, tokens=s.acked_tokens)
            )
        self._on_session_closing()

    # -- connections

    async def _handle(self, ws: ServerConnection) -> None:
        peer = ws.remote_address[0] if ws.remote_address else "unknown"
        conn = Connection(self, ws, peer)
        try:
            if not self.accepting or len(self.connections) >= self.limits.max_connections:
                await conn.refuse(
                    SDKErrorCode.SERVICE_UNAVAILABLE, "the host is not accepting sessions now",
                    CLOSE_TRY_AGAIN,
                )  # fmt: skip
                return
            if self._per_ip[peer] >= self.limits.max_connections_per_ip:
                await conn.refuse(
                    SDKErrorCode.TOO_MANY_CONNECTIONS,
                    f"at most {self.limits.max_connections_per_ip} connections per client",
                    CLOSE_POLICY,
                )
                return
        except ConnectionClosed:
            return
        self._per_ip[peer] += 1
        self.connections.add(conn)
        self.metrics.connections.set(len(self.connections))
        try:
            await conn.run()
        except ConnectionClosed:
            pass
        except Exception:  # never let one connection's bug reach the server
            log.exception(kv("connection_crashed", peer=peer))
        finally:
            await conn.cleanup()
            self.connections.discard(conn)
            self._release_slot(conn)
            self.metrics.connections.set(len(self.connections))

    def _release_slot(self, conn: Connection) -> None:
        counts, key = (
            (self._per_wallet, conn.wallet)
            if conn.wallet is not None
            else (self._per_ip, conn.peer)
        )
        counts[key] -= 1
        if counts[key] <= 0:
            del counts[key]

    def take_wallet_slot(self, conn: Connection, wallet: str) -> bool:
        """Move an authenticated connection from its IP's count to its wallet's; False
        when the wallet already has `max_sessions_per_wallet` sessions here."""
        if self._per_wallet[wallet] >= self.limits.max_sessions_per_wallet:
            return False
        self._release_slot(conn)
        conn.wallet = wallet
        self._per_wallet[wallet] += 1
        return True

    # -- HTTP

    async def _http(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/health":
                return _json(conn, 200, await self._health())
            if path == "/v1/models":
                return _json(conn, 200, self.models_payload())
            if path == "/metrics":
                await self._refresh_metrics()
                response = conn.respond(200, self.metrics.render())
                _set_type(response, "text/plain; version=0.0.4; charset=utf-8")
                return response
        except Exception:
            log.exception(kv("http_error", path=path))
            return _json(conn, 500, {"error": "internal error"})
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        return _json(conn, 404, {"error": f"no such endpoint: {path}"})

    def models_payload(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": self.address,
                    "model_id": self.model.model_id,
                    "file": self.model.file,
                    "sha256": self.model.sha256,
                    "context_length": self.model.n_ctx,
                }
            ],
        }


def _set_type(response: Response, content_type: str) -> None:
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = content_type


def _json(conn: ServerConnection, status: int, payload: dict[str, Any]) -> Response:
    response = conn.respond(status, json.dumps(payload, separators=(",", ":")) + "\n")
    _set_type(response, "application/json")
    return response


class Connection:
    """One client's WebSocket: handshake, then a reader loop and one generation at a time."""

    def __init__(self, server: HostServer, ws: ServerConnection, peer: str) -> None:
        self.server = server
        self.ws = ws
        self.peer = peer
        #: The depositor once a session is open (it then counts against the wallet).
        self.wallet: str | None = None
        self.limits = server.limits
        self.nonce = new_nonce()
        self.session: ServedSession | None = None
        self.generation: asyncio.Task[None] | None = None
        self.task: asyncio.Task[Any] | None = None
        self._prompt_times: deque[float] = deque()
        self._terminating = False
        #: The protocol version of this client's frames: session_init says it (hello,
        #: error and pong, all that is sent before, read the same in every version).
        self.version = PROTOCOL_VERSION

    # -- sending

    async def send(self, message: Message) -> None:
        await self.ws.send(message.to_json(self.version))

    async def error(self, code: SDKErrorCode, message: str, id: str | None = None) -> None:
        self.server.metrics.errors.labels(code=code.value).inc()
        log.info(
            kv(
                "error_frame",
                code=code.value,
                session=self.session.session_id if self.session else None,
                id=id,
                peer=self.peer,
                message=message[:200],
            )
        )
        await self.send(ErrorMessage(code=code.value, message=message[:2048], id=id))

    async def refuse(self, code: SDKErrorCode, message: str, close_code: int) -> None:
        await self.error(code, message)
        await self.ws.close(close_code, code.value)

    # -- lifecycle

    async def run(self) -> None:
        self.task = asyncio.current_task()
        await self.send(
            Hello(
                v=PROTOCOL_VERSION,
                nonce=self.nonce,
                host=self.server.address,
                chain_id=self.server.domain.chain_id,
                marketplace=self.server.domain.verifying_contract,
                model_id=self.server.model.model_id,
            )
        )
        if await self._handshake():
            await self._serve()

    async def terminate(self, code: SDKErrorCode, message: str) -> None:
        """End this connection from outside (takeover, settlement, shutdown): stop the
        generation, tell the client why, close, and wait for the handler to finish."""
        if self._terminating:
            return
        self._terminating = True
        await self._stop_generation()
        with contextlib.suppress(ConnectionClosed):
            await self.error(code, message)
        close_code = CLOSE_GOING_AWAY if code is SDKErrorCode.SERVICE_UNAVAILABLE else CLOSE_POLICY
        await self.ws.close(close_code, code.value)
        task = self.task
        if task is not None and task is not asyncio.current_task() and not task.done():
            await asyncio.wait({task}, timeout=_TERMINATE_WAIT)

    async def cleanup(self) -> None:
        await self._stop_generation()
        s = self.session
        if s is not None and s.owner is self:
            s.owner = None
            if not s.closed:
                with contextlib.suppress(Exception):
                    await self.server.store.touch(s.session_id)
                log.info(kv("session_detached", session=s.session_id, peer=self.peer))

    async def _stop_generation(self) -> None:
        task = self.generation
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self.generation = None

    # -- handshake

    async def _handshake(self) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.init_timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    raw = await self.ws.recv()
            except TimeoutError:
                await self.refuse(
                    SDKErrorCode.NOT_INITIALIZED,
                    f"no valid session_init within {self.limits.init_timeout:g}s",
                    CLOSE_POLICY,
                )
                return False
            try:
                msg = parse_message(raw, sender="client", max_bytes=self.limits.max_frame_bytes)
            except ProtocolError as exc:
                await self.error(exc.code, exc.message)
                continue
            if isinstance(msg, Ping):
                await self.send(Pong(ts=msg.ts))
                continue
            if isinstance(msg, Pong):
                continue
            if not isinstance(msg, SessionInit):
                await self.error(
                    SDKErrorCode.NOT_INITIALIZED, f"send session_init before {msg.TYPE}"
                )
                continue
            self.version = msg.version
            try:
                session = await self.server.open_session(msg, self.nonce, self)
            except SDKError as exc:
                await self.refuse(exc.code, exc.message, CLOSE_POLICY)
                return False
            except ChainError as exc:
                log.warning(kv("session_init_chain_error", session=msg.session_id, error=str(exc)))
                await self.refuse(
                    SDKErrorCode.SERVICE_UNAVAILABLE, "the session could not be checked on chain",
                    CLOSE_TRY_AGAIN,
                )  # fmt: skip
                return False
            except Exception:
                log.exception(kv("session_init_failed", session=msg.session_id, peer=self.peer))
                await self.refuse(
                    SDKErrorCode.INTERNAL_ERROR, "the host failed to open the session", CLOSE_POLICY
                )
                return False
            if not self.server.take_wallet_slot(self, session.terms.client.lower()):
                await self.refuse(
                    SDKErrorCode.TOO_MANY_CONNECTIONS,
                    f"at most {self.limits.max_sessions_per_wallet} sessions at once per wallet",
                    CLOSE_POLICY,
                )
                return False
            self.session = session
            self.server.metrics.sessions_started.inc()
            await self.send(
                SessionReady(
                    session_id=session.session_id,
                    tokens_used=session.acked_tokens,
                    content_hash=session.acked_hash,
                    max_tokens=session.terms.max_tokens,
                    proof_interval=session.terms.proof_interval,
                    price_per_token=session.terms.price,
                )
            )
            return True

    # -- serving

    async def _serve(self) -> None:
        async for raw in self.ws:
            try:
                if not await self._dispatch(raw):
                    return
            except ConnectionClosed:
                raise
            except Exception:
                log.exception(kv("frame_handler_failed", peer=self.peer))
                await self.error(SDKErrorCode.INTERNAL_ERROR, "the host failed on this frame")

    async def _dispatch(self, raw: str | bytes) -> bool:
        """Handle one frame; False when the connection should end."""
        try:
            msg = parse_message(raw, sender="client", max_bytes=self.limits.max_frame_bytes)
        except ProtocolError as exc:
            await self.error(exc.code, exc.message)
            return True
        s = self.session
        assert s is not None
        if s.closed:
            await self.error(SDKErrorCode.INVALID_SESSION_STATE, "the session is closed")
            return False
        if isinstance(msg, Ping):
            await self.send(Pong(ts=msg.ts))
        elif isinstance(msg, Pong):
            pass
        elif isinstance(msg, Prompt):
            await self._on_prompt(s, msg)
        elif isinstance(msg, ReceiptMessage):
            await self._on_receipt(s, msg)
        elif isinstance(msg, Cancel):
            if s.running == msg.id:
                s.cancel()
            else:  # it may have just ended; nothing to do
                log.debug(kv("cancel_ignored", session=s.session_id, id=msg.id))
        elif isinstance(msg, Close):
            if msg.session_id != s.session_id:
                await self.error(
                    SDKErrorCode.INVALID_SESSION_STATE,
                    f"close for session {msg.session_id}; this connection serves {s.session_id}",
                )
                return True
            await self._on_close(s)
            return False
        elif isinstance(msg, SessionInit):
            await self.error(
                SDKErrorCode.INVALID_SESSION_STATE, "this connection already has a session"
            )
        else:  # pragma: no cover - parse_message(sender="client") admits nothing else
            await self.error(SDKErrorCode.UNKNOWN_MESSAGE_TYPE, f"unexpected {msg.TYPE}")
        return True

    def _rate_limited(self) -> bool:
        now = time.monotonic()
        times = self._prompt_times
        while times and now - times[0] >= 60.0:
            times.popleft()
        if len(times) >= self.limits.prompts_per_minute:
            return True
        times.append(now)
        return False

    async def _on_prompt(self, s: ServedSession, msg: Prompt) -> None:
        if self._rate_limited():
            await self.error(
                SDKErrorCode.RATE_LIMITED,
                f"at most {self.limits.prompts_per_minute} prompts per minute",
                msg.id,
            )
            return
        if s.running is not None:
            await self.error(
                SDKErrorCode.INVALID_SESSION_STATE,
                f"request {s.running!r} is still running; one prompt at a time",
                msg.id,
            )
            return
        n_chars = sum(map(len, (msg.text, msg.system or "", *(msg.context or ()))))
        if n_chars > self.limits.max_prompt_chars:
            await self.error(
                SDKErrorCode.PROMPT_TOO_LARGE,
                f"prompt has {n_chars} characters; the limit is {self.limits.max_prompt_chars}",
                msg.id,
            )
            return
        if not msg.text.strip():
            await self.error(SDKErrorCode.INVALID_ARGUMENT, "the prompt is empty", msg.id)
            return
        if s.offline:
            # Admitted while the chain was unreachable: the session's on-chain state was
            # never checked, so nothing is served; receipts and close still work.
            await self.error(
                SDKErrorCode.SERVICE_UNAVAILABLE,
                "the host cannot reach its chain: it takes receipts and close only; "
                "reconnect to prompt once it can",
                msg.id,
            )
            return
        if time.time() >= s.terms.ends_at - self.server.config.expiry_margin:
            await self.error(
                SDKErrorCode.SESSION_EXPIRED,
                f"the session ends at {s.terms.ends_at}; open a new one",
                msg.id,
            )
            return
        if s.remaining == 0:
            await self.error(
                SDKErrorCode.SESSION_BUDGET_EXHAUSTED,
                f"the deposit pays for {s.terms.max_tokens} tokens and all are used",
                msg.id,
            )
            return
        if s.needs_receipt:
            tokens, content_hash = s.last_sent
            await self.send(ReceiptRequest(tokens_used=tokens, content_hash=content_hash))
            await self.error(
                SDKErrorCode.RECEIPT_REQUIRED,
                f"{s.unsigned} tokens are unsigned; sign the receipt for {tokens} to continue",
                msg.id,
            )
            return
        s.begin(msg.id)
        self.generation = asyncio.create_task(self._generate(s, msg), name=f"gen-{s.session_id}")

    async def _generate(self, s: ServedSession, msg: Prompt) -> None:
        ctx = ServeContext(
            engine=self.server.engine,
            send=self.send,
            error=self.error,
            limits=self.limits,
            metrics=self.server.metrics,
            system_prompt=self.server.config.system_prompt,
            temperature=self.server.config.temperature,
        )
        try:
            await s.run_prompt(msg, ctx)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception(kv("generation_failed", session=s.session_id, id=msg.id))
            with contextlib.suppress(ConnectionClosed):
                await self.error(SDKErrorCode.INTERNAL_ERROR, "generation failed", msg.id)
        finally:
            s.running = None

    async def _on_receipt(self, s: ServedSession, msg: ReceiptMessage) -> None:
        receipt = msg.to_receipt()
        try:
            s.check_receipt(receipt, self.server.domain)
        except SDKError as exc:
            await self.error(exc.code, exc.message)
            return
        store = self.server.store
        tokens = receipt.tokens_used
        if not await store.save_receipt(receipt):
            record = await store.get(s.session_id)
            if record is None or record.receipt_tokens < tokens:
                await self.error(
                    SDKErrorCode.INVALID_SESSION_STATE, "the session is no longer open"
                )
                return
        # Durable now: only from here on may the receipt be acknowledged.
        s.accept_receipt(tokens, receipt.content_hash)
        self.server.metrics.receipts.inc()
        log.info(kv("receipt", session=s.session_id, tokens=tokens))
        await self.send(ReceiptAck(tokens_used=tokens))

    async def _on_close(self, s: ServedSession) -> None:
        if s.running is not None:
            s.cancel()
            task = self.generation
            if task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task), 5.0)
        await self.server.close_session(s, "client")
        await self.ws.close(CLOSE_NORMAL, "session closed")
