"""A small, strict client of docs/protocol.md.

`ProtocolClient` is written against `fabstir.protocol` only (messages, receipts, content
hash chain), not against the SDK, so tests using it pin the wire protocol itself: every
chunk's hash is recomputed from the received text and every receipt is signed with the
session key exactly as docs/protocol.md says."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TypeVar

import websockets
from eth_account.signers.local import LocalAccount
from support.host_env import Opened

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


async def ask_and_close(url: str, opened: Opened, prompt: str, max_tokens: int) -> int:
    """One prompt in a fresh session, then the client's close: the tokens received
    (the final receipt's count), for tests of what settlement does next."""
    client = await start_session(url, opened)
    await client.ask(prompt, max_tokens)
    await client.close_session()
    return client.tokens
