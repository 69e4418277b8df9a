"""Property-based fuzz of inbound frames (hypothesis): whatever a client sends, before or
after session_init, the worker answers without crashing, never with INTERNAL_ERROR, and a
session served alongside is not disturbed."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.host_env import HostEnv, Opened
from support.protocol_client import Reply, start_session
from support.worker import http_get, metric
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from fabstir.host.config import Limits
from fabstir.protocol.messages import (
    MESSAGE_TYPES,
    SUPPORTED_VERSIONS,
    Cancel,
    Close,
    Ping,
    Pong,
    Prompt,
    ProtocolError,
    ReceiptMessage,
    SessionInit,
    parse_message,
)
from fabstir.protocol.receipts import ReceiptSigner

pytestmark = pytest.mark.usefixtures("hostenv")

FIELDS = sorted(
    {f for cls in MESSAGE_TYPES.values() for f in cls.__dataclass_fields__}
    | {"type", "v", "extra", "tokens"}
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["0x" + "00" * 32, "0x" + "ab" * 65, "0x" + "11" * 20, "p-1", ""])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
objects = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from([*MESSAGE_TYPES, "", "PROMPT", "hello2", "x" * 70]),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=5),
)
hex32 = st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex())
sig65 = st.binary(min_size=65, max_size=65).map(lambda b: "0x" + b.hex())
ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)
small = st.integers(min_value=0, max_value=2**53 - 1) | st.integers(min_value=0, max_value=5)
valid_messages = st.one_of(
    st.builds(Prompt, id=ids, text=st.text(max_size=100), max_tokens=st.integers(1, 2**53 - 1)),
    st.builds(Cancel, id=ids),
    st.builds(
        ReceiptMessage, session_id=small, tokens_used=small, content_hash=hex32, signature=sig65
    ),
    st.builds(SessionInit, session_id=small, signature=sig65, v=st.sampled_from([None, 1, 2])),
    st.builds(Ping, ts=small),
    st.builds(Pong, ts=small),
    st.builds(Close, session_id=small),
)
# Each frame as either protocol version writes it (version 1: `tokens`, no session_init.v).
valid = st.tuples(valid_messages, st.sampled_from(sorted(SUPPORTED_VERSIONS))).map(
    lambda mv: mv[0].to_dict(mv[1])
)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A valid frame with one field replaced, removed or added."""
    obj = dict(draw(valid))
    key = draw(st.sampled_from([*obj, "extra"]))
    if draw(st.booleans()) and key in obj:
        del obj[key]
    else:
        obj[key] = draw(json_values)
    return obj


frames = st.one_of(
    valid.map(json.dumps),
    mutated().map(json.dumps),
    objects.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=300),
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=400).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=1, max_value=200).map(lambda n: '{"a":' * n + "1" + "}" * n),
)


class Fuzzer:
    """Sync WebSocket clients: one initialised session, plus fresh pre-init connections."""

    def __init__(self, url: str, opened: Opened, domain: Any) -> None:
        self.url = url
        self.opened = opened
        self.domain = domain
        self.ts = itertools.count(1_000)
        self.live: ClientConnection | None = None
        self.codes: set[str] = set()

    def _init(self) -> ClientConnection:
        from fabstir.protocol.receipts import ReceiptSigner

        ws = connect(self.url, max_size=None)
        hello = parse_message(ws.recv(timeout=20), sender="host")
        sig = ReceiptSigner(self.opened.key.key, self.domain).sign_session_init(
            self.opened.session_id,
            hello.nonce,  # type: ignore[attr-defined]
        )
        ws.send(SessionInit(session_id=self.opened.session_id, signature=sig).to_json())
        ready = parse_message(ws.recv(timeout=20), sender="host")
        assert ready.TYPE == "session_ready", ready
        return ws

    def send(self, batch: list[str | bytes], *, initialised: bool) -> None:
        if initialised:
            if self.live is None:
                self.live = self._init()
            ws = self.live
        else:
            ws = connect(self.url, max_size=None)
            assert parse_message(ws.recv(timeout=20), sender="host").TYPE == "hello"
        ts = next(self.ts)
        try:
            for raw in batch:
                ws.send(raw)
            ws.send(json.dumps({"type": "ping", "ts": ts}))
            while True:  # everything the host says parses; it answers the ping
                msg = parse_message(ws.recv(timeout=60), sender="host")
                if msg.TYPE == "error":
                    self.codes.add(msg.code)  # type: ignore[attr-defined]
                    assert msg.code != "INTERNAL_ERROR", msg
                if msg.TYPE == "pong" and msg.ts == ts:  # type: ignore[attr-defined]
                    break
        except ConnectionClosed:
            # The host may close (e.g. a session_init for an unknown session).
            if initialised:
                self.live = None
        finally:
            if not initialised:
                ws.close()


def bystander(url: str, opened: Opened, stop: threading.Event, out: list[Any]) -> None:
    async def main() -> None:
        client = await start_session(url, opened)
        while not stop.is_set():
            out.append(await client.ask("Name one colour.", 4, timeout=120))
        await client.aclose()

    try:
        asyncio.run(main())
    except BaseException as exc:
        out.append(exc)


def test_fuzzed_frames_never_hurt_the_worker(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker(
        limits=Limits(max_tokens_per_request=2, prompts_per_minute=1000, max_frame_bytes=8192)
    )
    fuzzed = hostenv.open_session(proof_interval=1000)
    calm = hostenv.open_session(proof_interval=2)
    fuzzer = Fuzzer(w.url, fuzzed, hostenv.domain)
    stop, results = threading.Event(), []
    thread = threading.Thread(target=bystander, args=(w.url, calm, stop, results), daemon=True)
    thread.start()

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        derandomize=True,
    )
    @given(batch=st.lists(frames, min_size=1, max_size=4), initialised=st.booleans())
    def fuzz(batch: list[str | bytes], initialised: bool) -> None:
        for raw in batch:
            try:
                msg = parse_message(raw, sender="client")
            except ProtocolError:
                continue
            # A well-formed close ends the fuzzed session for good: not what we test.
            assume(not isinstance(msg, Close))
        fuzzer.send(batch, initialised=initialised)

    try:
        fuzz()
        # Whatever the draws were, the two refusals the assertion below names are sent
        # once each: a session nobody opened, and a receipt signed by a stranger.
        fuzzer.send(
            [SessionInit(session_id=10**9, signature="0x" + "11" * 65).to_json()],
            initialised=False,
        )
        stranger = ReceiptSigner(bytes(range(1, 33)), hostenv.domain)
        forged = stranger.sign(fuzzed.session_id, 1, "0x" + "22" * 32)
        fuzzer.send([ReceiptMessage.from_receipt(forged).to_json()], initialised=True)
    finally:
        stop.set()
        thread.join(180)
    assert not thread.is_alive()
    assert results and all(isinstance(r, Reply) for r in results), results[-1:]
    for reply in results:
        assert reply.end is not None and not reply.errors
    assert w.thread.is_alive()
    assert http_get(w.http + "/health")[0] == 200
    body = http_get(w.http + "/metrics")[2]
    assert metric(body, "fabstir_host_errors_total", code="INTERNAL_ERROR") == 0
    assert {
        "MALFORMED_MESSAGE",
        "UNKNOWN_MESSAGE_TYPE",
        "NOT_INITIALIZED",
        "SESSION_NOT_FOUND",
        "PROOF_VERIFICATION_FAILED",
    } <= fuzzer.codes
