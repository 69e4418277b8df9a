"""A fault-injecting JSON-RPC proxy for tests: a real HTTP server on 127.0.0.1 that
forwards to a real node (anvil) and misbehaves on request, the way public RPCs do.

    with FaultProxy(anvil_url) as proxy:
        proxy.fail_next(2, status=429, retry_after=1)      # "slow down", twice
        proxy.accept_then_fail("eth_sendRawTransaction")   # node took it, reply lost
        proxy.cap_logs(max_range=1000, max_results=50)     # getLogs limits
        proxy.lag_latest(5)                                 # `latest` 5 blocks behind
        client = ChainClient(proxy.url, ...)

Every fault is counted in `proxy.injected` (fault name -> times) and every request
in `proxy.calls` (method -> times), so a test can assert that its fault really
happened. Reused by the soak (issue 15): keep it free of project imports.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class _Fault:
    """One scheduled misbehaviour: `times` more matching requests get it (-1: all)."""

    kind: str  # "status" | "accept_then_status" | "hang" | "truncate" | "drop_connection"
    methods: frozenset[str] | None
    times: int
    status: int = 429
    retry_after: float | None = None
    seconds: float = 0.0
    rate: float = 1.0

    def matches(self, method: str, rng: random.Random) -> bool:
        if self.times == 0:
            return False
        if self.methods is not None and method not in self.methods:
            return False
        return self.rate >= 1.0 or rng.random() < self.rate


@dataclass
class _LogCap:
    max_range: int | None = None
    max_results: int | None = None
    message: str = "block range too large"


@dataclass
class FaultProxy:
    """Forward JSON-RPC to `upstream`, injecting the faults scheduled on it."""

    upstream: str
    seed: int = 1
    calls: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._log_cap: _LogCap | None = None
        self._lag = 0
        self._rng = random.Random(self.seed)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("proxy not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                proxy._handle(self, self.rfile.read(length))

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests assert on counters, not on logs

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- scheduling faults ------------------------------------------------------

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    @staticmethod
    def _methods(methods: str | Iterable[str] | None) -> frozenset[str] | None:
        if methods is None:
            return None
        return frozenset([methods] if isinstance(methods, str) else methods)

    def fail_next(
        self,
        times: int = 1,
        *,
        status: int = 429,
        retry_after: float | None = None,
        methods: str | Iterable[str] | None = None,
        rate: float = 1.0,
    ) -> None:
        """Answer the next `times` matching requests with HTTP `status` (not forwarded);
        429s carry `Retry-After` when given. `times=-1` with `rate` < 1 fails that
        fraction of all matching requests."""
        self._add(_Fault("status", self._methods(methods), times, status, retry_after, rate=rate))

    def accept_then_fail(
        self,
        methods: str | Iterable[str] = "eth_sendRawTransaction",
        *,
        times: int = 1,
        status: int = 429,
        retry_after: float | None = None,
    ) -> None:
        """Forward the request (the node acts on it), then lose the answer: reply `status`."""
        self._add(_Fault("accept_then_status", self._methods(methods), times, status, retry_after))

    def hang_next(
        self, times: int = 1, *, seconds: float = 5.0, methods: str | Iterable[str] | None = None
    ) -> None:
        """Hold the next matching requests for `seconds` before answering (a client with
        a shorter timeout sees a timeout; the request is not forwarded)."""
        self._add(_Fault("hang", self._methods(methods), times, seconds=seconds))

    def truncate_next(self, times: int = 1, *, methods: str | Iterable[str] | None = None) -> None:
        """Forward, then send only the first half of the node's answer body."""
        self._add(_Fault("truncate", self._methods(methods), times))

    def cap_logs(
        self,
        max_range: int | None = None,
        max_results: int | None = None,
        *,
        message: str = "block range too large",
    ) -> None:
        """Refuse eth_getLogs over more than `max_range` blocks (JSON-RPC error with
        `message`) or returning more than `max_results` entries ("limit exceeded")."""
        with self._lock:
            self._log_cap = _LogCap(max_range, max_results, message)

    def lag_latest(self, blocks: int) -> None:
        """Serve `latest` (eth_blockNumber, eth_getBlockByNumber("latest")) `blocks` behind."""
        with self._lock:
            self._lag = blocks

    def clear(self) -> None:
        """Stop every fault (counters are kept)."""
        with self._lock:
            self._faults.clear()
            self._log_cap = None
            self._lag = 0

    # --- serving ----------------------------------------------------------------

    def _take_fault(self, method: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, self._rng):
                    if fault.times > 0:
                        fault.times -= 1
                    self.injected[fault.kind] += 1
                    return fault
        return None

    def _forward(self, body: bytes) -> bytes:
        req = urllib.request.Request(
            self.upstream, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            data: bytes = resp.read()
            return data

    def _rpc(self, method: str, params: list[Any], rid: Any = 1) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        return json.loads(self._forward(body.encode()))

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        try:
            request = json.loads(body)
        except ValueError:
            self._reply(handler, 400, b'{"error":"bad json"}')
            return
        method = request.get("method", "batch") if isinstance(request, dict) else "batch"
        with self._lock:
            self.calls[method] += 1
        fault = self._take_fault(method)
        if fault is not None and fault.kind == "status":
            self._reply(handler, fault.status, b"{}", fault.retry_after)
            return
        if fault is not None and fault.kind == "hang":
            time.sleep(fault.seconds)
            self._reply(handler, 504, b"{}")
            return
        try:
            answer = self._answer(request, method, body)
        except (urllib.error.URLError, OSError) as exc:
            self._reply(handler, 502, json.dumps({"error": str(exc)}).encode())
            return
        if fault is not None and fault.kind == "accept_then_status":
            self._reply(handler, fault.status, b"{}", fault.retry_after)
            return
        if fault is not None and fault.kind == "truncate":
            answer = answer[: max(1, len(answer) // 2)]
        self._reply(handler, 200, answer)

    def _answer(self, request: Any, method: str, body: bytes) -> bytes:
        if not isinstance(request, dict):
            return self._forward(body)
        with self._lock:
            cap, lag = self._log_cap, self._lag
        rid = request.get("id", 1)
        params = request.get("params") or []
        if method == "eth_getLogs" and cap is not None:
            refusal = self._check_logs(cap, params[0] if params else {})
            if refusal is not None:
                self.injected["logs_refused"] += 1
                return json.dumps(
                    {"jsonrpc": "2.0", "id": rid, "error": {"code": -32005, "message": refusal}}
                ).encode()
        if lag and method == "eth_blockNumber":
            head = int(self._rpc("eth_blockNumber", [])["result"], 16)
            self.injected["lagged"] += 1
            return json.dumps(
                {"jsonrpc": "2.0", "id": rid, "result": hex(max(0, head - lag))}
            ).encode()
        if lag and method == "eth_getBlockByNumber" and params and params[0] == "latest":
            head = int(self._rpc("eth_blockNumber", [])["result"], 16)
            self.injected["lagged"] += 1
            lagged = self._rpc("eth_getBlockByNumber", [hex(max(0, head - lag)), *params[1:]])
            lagged["id"] = rid
            return json.dumps(lagged).encode()
        return self._forward(body)

    def _check_logs(self, cap: _LogCap, query: dict[str, Any]) -> str | None:
        head = int(self._rpc("eth_blockNumber", [])["result"], 16)
        lo, hi = _block(query.get("fromBlock"), head), _block(query.get("toBlock"), head)
        if cap.max_range is not None and hi - lo + 1 > cap.max_range:
            return f"{cap.message}: {hi - lo + 1} blocks requested, at most {cap.max_range}"
        if cap.max_results is not None:
            found = self._rpc("eth_getLogs", [query]).get("result") or []
            if len(found) > cap.max_results:
                return f"query returned more than {cap.max_results} results: limit exceeded"
        return None

    @staticmethod
    def _reply(
        handler: BaseHTTPRequestHandler, status: int, body: bytes, retry_after: float | None = None
    ) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            if retry_after is not None:
                handler.send_header("Retry-After", f"{retry_after:g}")
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout); nothing to answer


def _block(tag: Any, head: int) -> int:
    if tag is None or tag in ("latest", "pending", "safe", "finalized"):
        return head
    if tag == "earliest":
        return 0
    return int(tag, 16) if isinstance(tag, str) else int(tag)
