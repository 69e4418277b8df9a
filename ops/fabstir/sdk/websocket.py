"""WebSocketClient: the client end of the host protocol, with reconnect and heartbeat.

Frames are parsed with `parse_message(sender="host")`, so a host can only ever hand
the SDK well-formed protocol messages (or a ProtocolError). Received messages go to
registered handlers (the reference's onMessage/onError) and to a queue that
`receive()` reads, which is what SessionManager uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from fabstir.protocol.messages import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Message,
    Ping,
    Pong,
    ProtocolError,
    parse_message,
)
from fabstir.sdk.constants import (
    WS_HEARTBEAT_INTERVAL,
    WS_MAX_RECONNECT_ATTEMPTS,
    WS_RECONNECT_INTERVAL,
)
from fabstir.sdk.errors import SDKError, SDKErrorCode

log = logging.getLogger(__name__)

MessageHandler = Callable[[Message], Awaitable[None] | None]
ErrorHandler = Callable[[Exception], Awaitable[None] | None]
ReconnectHandler = Callable[[], Awaitable[None]]

_CLOSED = object()


class WebSocketClient:
    """A reconnecting JSON-protocol WebSocket connection to one host.

    `heartbeat_interval` drives WebSocket-level pings (a dead peer is noticed within
    two intervals); `ping()` measures an application-level round trip. After an
    unexpected disconnect the client reconnects with exponential backoff (at most
    `max_reconnect_attempts`) and then runs the `on_reconnect` hooks, which is where
    a session re-authenticates.
    """

    def __init__(
        self,
        url: str,
        *,
        reconnect_interval: float = WS_RECONNECT_INTERVAL,
        max_reconnect_attempts: int = WS_MAX_RECONNECT_ATTEMPTS,
        heartbeat_interval: float = WS_HEARTBEAT_INTERVAL,
        open_timeout: float = 10.0,
        auto_reconnect: bool = True,
    ) -> None:
        self.url = url
        self.reconnect_interval = reconnect_interval
        self.max_reconnect_attempts = max_reconnect_attempts
        self.heartbeat_interval = heartbeat_interval
        self.open_timeout = open_timeout
        self.auto_reconnect = auto_reconnect
        #: The protocol version frames are written in (the session lowers it for an
        #: older host after its hello).
        self.version = PROTOCOL_VERSION
        self._conn: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._message_handlers: list[MessageHandler] = []
        self._error_handlers: list[ErrorHandler] = []
        self._reconnect_handlers: list[ReconnectHandler] = []
        self._closing = False
        self._pongs: dict[int, asyncio.Future[float]] = {}

    # ------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._reader is not None and not self._reader.done()

    async def connect(self) -> None:
        """Open the connection (raises SDKError WEBSOCKET_CONNECTION_FAILED)."""
        self._closing = False
        try:
            self._conn = await connect(
                self.url,
                open_timeout=self.open_timeout,
                ping_interval=self.heartbeat_interval,
                ping_timeout=self.heartbeat_interval,
                max_size=MAX_FRAME_BYTES,
                close_timeout=2,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise SDKError(
                SDKErrorCode.WEBSOCKET_CONNECTION_FAILED, f"cannot connect to {self.url}: {exc}"
            ) from exc
        self._queue = asyncio.Queue()
        self._reader = asyncio.create_task(
            self._read_loop(self._conn), name=f"ws-reader {self.url}"
        )

    async def close(self) -> None:
        """Close for good (no reconnect); pending receive() calls end with an error."""
        self._closing = True
        conn, reader = self._conn, self._reader
        self._conn = None
        if conn is not None:
            await conn.close()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._queue.put_nowait(_CLOSED)

    async def reconnect(self) -> None:
        """Reconnect with exponential backoff, then run the on_reconnect hooks."""
        delay = self.reconnect_interval
        last: Exception | None = None
        for attempt in range(1, self.max_reconnect_attempts + 1):
            try:
                await self.connect()
            except SDKError as exc:
                last = exc
                log.warning(
                    "reconnect %d/%d to %s failed; next in %.1fs",
                    attempt,
                    self.max_reconnect_attempts,
                    self.url,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            for hook in list(self._reconnect_handlers):
                await hook()
            return
        raise SDKError(
            SDKErrorCode.WEBSOCKET_CONNECTION_FAILED,
            f"gave up reconnecting to {self.url} after {self.max_reconnect_attempts} attempts: {last}",
        )

    # ------------------------------------------------------------- sending

    async def send(self, message: Message) -> None:
        """Send one protocol message (raises WEBSOCKET_MESSAGE_FAILED when not connected)."""
        conn = self._conn
        if conn is None:
            raise SDKError(SDKErrorCode.WEBSOCKET_MESSAGE_FAILED, "not connected")
        try:
            await conn.send(message.to_json(self.version))
        except ConnectionClosed as exc:
            raise SDKError(
                SDKErrorCode.WEBSOCKET_MESSAGE_FAILED, f"connection closed: {exc}"
            ) from exc

    async def ping(self, timeout: float = 10.0) -> float:
        """Application-level ping; returns the round trip in seconds."""
        ts = time.monotonic_ns() // 1_000_000
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pongs[ts] = future
        try:
            await self.send(Ping(ts=ts))
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pongs.pop(ts, None)

    # ------------------------------------------------------------- receiving

    def on_message(self, handler: MessageHandler) -> Callable[[], None]:
        """Call `handler` for every message; returns a function that unsubscribes."""
        self._message_handlers.append(handler)
        return lambda: self._message_handlers.remove(handler)

    def on_error(self, handler: ErrorHandler) -> Callable[[], None]:
        """Call `handler` for protocol and connection errors; returns an unsubscriber."""
        self._error_handlers.append(handler)
        return lambda: self._error_handlers.remove(handler)

    def on_reconnect(self, handler: ReconnectHandler) -> Callable[[], None]:
        """Run `handler` after every successful automatic reconnect."""
        self._reconnect_handlers.append(handler)
        return lambda: self._reconnect_handlers.remove(handler)

    async def receive(self, timeout: float | None = None) -> Message:
        """The next message from the host, in order. Raises SDKError on timeout
        (WEBSOCKET_MESSAGE_FAILED), disconnect (WEBSOCKET_CONNECTION_FAILED) or a
        malformed frame (the ProtocolError itself)."""
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            raise SDKError(
                SDKErrorCode.WEBSOCKET_MESSAGE_FAILED, f"no message from the host within {timeout}s"
            ) from None
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # every later receive() fails too
            raise SDKError(
                SDKErrorCode.WEBSOCKET_CONNECTION_FAILED, "connection to the host closed"
            )
        if isinstance(item, Exception):
            raise item
        assert isinstance(item, Message)
        return item

    async def _read_loop(self, conn: ClientConnection) -> None:
        try:
            async for frame in conn:
                try:
                    message = parse_message(frame, sender="host")
                except ProtocolError as exc:
                    await self._emit_error(exc)
                    self._queue.put_nowait(exc)
                    continue
                if isinstance(message, Pong) and message.ts in self._pongs:
                    future = self._pongs[message.ts]
                    if not future.done():
                        future.set_result((time.monotonic_ns() // 1_000_000 - message.ts) / 1000)
                    continue
                if isinstance(message, Ping):
                    with contextlib.suppress(ConnectionClosed):
                        await conn.send(Pong(ts=message.ts).to_json())
                    continue
                for handler in list(self._message_handlers):
                    result = handler(message)
                    if asyncio.iscoroutine(result):
                        await result
                self._queue.put_nowait(message)
        except ConnectionClosed as exc:
            if not self._closing:
                await self._emit_error(exc)
        finally:
            if not self._closing:
                self._queue.put_nowait(_CLOSED)
                if self.auto_reconnect and conn is self._conn:
                    self._conn = None
                    asyncio.get_running_loop().create_task(self._reconnect_quietly())

    async def _reconnect_quietly(self) -> None:
        try:
            await self.reconnect()
        except SDKError as exc:
            await self._emit_error(exc)

    async def _emit_error(self, exc: Exception) -> None:
        for handler in list(self._error_handlers):
            result = handler(exc)
            if asyncio.iscoroutine(result):
                await result
