"""A STAND-IN for an Etherscan-compatible contract-verification API (Base Sepolia's
basescan cannot be reached from here), served on 127.0.0.1 by a real HTTP server.

It speaks the calls `fabstir.chain.sourceverify.ExplorerClient` makes, with
Etherscan's answers: POST module=contract action=verifysourcecode -> a GUID (or
"Contract source code already verified"), GET action=checkverifystatus&guid= ->
the scripted answers ("Pending in queue", then "Pass - Verified", a failure, ...).
Faults (HTTP 429 with Retry-After, 5xx, a rate-limit answer) are queued ahead of
the real answers. A plain module: import it as `support.etherscan_standin`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    """One request the stand-in answered."""

    at: float
    method: str
    fields: dict[str, str]
    answered: int


@dataclass
class EtherscanStandIn:
    api_key: str = "STANDIN-KEY"
    #: contract name (the part after ':') -> checkverifystatus answers in turn (the
    #: last one repeats). Default: ["Pending in queue", "Pass - Verified"].
    answers: dict[str, list[str]] = field(default_factory=dict)
    #: contract names whose submission answers "already verified"
    already: set[str] = field(default_factory=set)
    #: (HTTP status, headers, body) answered before any real answer, in turn
    faults: deque[tuple[int, dict[str, str], str]] = field(default_factory=deque)
    seen: list[Seen] = field(default_factory=list)
    _guids: dict[str, deque[str]] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/api"

    def start(self) -> EtherscanStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
                standin._handle(self, "GET", {k: v[0] for k, v in query.items()})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
                standin._handle(self, "POST", {k: v[0] for k, v in form.items()})

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def submissions(self) -> list[dict[str, str]]:
        return [s.fields for s in self.seen if s.fields.get("action") == "verifysourcecode"]

    # --- answers ---------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, method: str, fields: dict[str, str]) -> None:
        with self._lock:
            status, headers, body = self._answer(method, fields)
            self.seen.append(Seen(time.monotonic(), method, fields, status))
        data = body.encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)

    def _answer(self, method: str, f: dict[str, str]) -> tuple[int, dict[str, str], str]:
        if self.faults:
            return self.faults.popleft()

        def reply(status: str, result: str) -> tuple[int, dict[str, str], str]:
            message = "OK" if status == "1" else "NOTOK"
            return 200, {}, json.dumps({"status": status, "message": message, "result": result})

        if f.get("apikey") != self.api_key:
            return reply("0", "Invalid API Key")
        if f.get("module") != "contract":
            return reply("0", "Error! Missing Or invalid Module name")
        if method == "POST" and f.get("action") == "verifysourcecode":
            name = f.get("contractname", "").rpartition(":")[2]
            if name in self.already:
                return reply("0", "Contract source code already verified")
            guid = uuid.uuid4().hex + uuid.uuid4().hex[:18]
            self._guids[guid] = deque(
                self.answers.get(name, ["Pending in queue", "Pass - Verified"])
            )
            return reply("1", guid)
        if method == "GET" and f.get("action") == "checkverifystatus":
            queue = self._guids.get(f.get("guid", ""))
            if queue is None:
                return reply("0", "Fail - Unable to verify. Unknown UID")
            answer = queue.popleft() if len(queue) > 1 else queue[0]
            return reply("1" if answer.startswith("Pass") else "0", answer)
        return reply("0", "Error! Missing Or invalid Action name")
