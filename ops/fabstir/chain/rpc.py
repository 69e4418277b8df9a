"""A JSON-RPC provider for public endpoints: several URLs with failover, HTTP 429
honoured through `Retry-After`, 5xx / timeouts / truncated answers retried.

web3's own HTTPProvider retries a few times on a fixed backoff and ignores
`Retry-After`, and knows one URL only. This provider replaces it under
`ChainClient`; anything it gives up on surfaces as `RpcUnavailable` (a
ProviderConnectionError, so the client's retry policy and its "unreachable"
reporting treat it as an outage, never as a revert).

Every request is safe to repeat here: reads trivially, and a raw transaction
has one hash whichever node sees it twice (the sender resolves duplicates).
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from web3.exceptions import ProviderConnectionError
from web3.providers.base import JSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

log = logging.getLogger(__name__)


class RpcUnavailable(ProviderConnectionError):
    """No configured RPC URL gave a usable answer within the provider's tries."""


@dataclass(frozen=True)
class RpcRetry:
    """How hard one JSON-RPC request is tried across the URLs."""

    #: Tries in total (over all URLs) before RpcUnavailable.
    attempts: int = 8
    first_delay: float = 0.2
    max_delay: float = 5.0
    #: A `Retry-After` longer than this is cut to it (a public RPC may say "60").
    max_retry_after: float = 30.0


def split_urls(value: str | Sequence[str]) -> list[str]:
    """RPC URLs from one string (comma-separated: "https://a,https://b") or a list."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    urls = [u.strip() for u in parts if u and u.strip()]
    if not urls:
        raise ValueError("no RPC URL given")
    return urls


def retry_after_seconds(header: str | None) -> float | None:
    """The delay a `Retry-After` header asks for, in seconds (None if absent or a date)."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        return None  # an HTTP date: rare on JSON-RPC, fall back to our own backoff


class FailoverHTTPProvider(JSONBaseProvider):
    """POST JSON-RPC to the first URL that answers; stick with it until it fails."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        timeout: float = 30.0,
        retry: RpcRetry | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        self.urls = split_urls(urls)
        self.timeout = timeout
        self.retry = retry or RpcRetry()
        self._sleep = sleep
        self._current = 0
        self._lock = threading.Lock()
        self._session = requests.Session()
        self._ids = itertools.count()
        #: (url, what went wrong) of every failed try, newest last (bounded).
        self.failures: list[tuple[str, str]] = []

    def __str__(self) -> str:
        return f"RPC {', '.join(self.urls)}"

    @property
    def endpoint_uri(self) -> str:
        """The URL now in use (the first configured until a failover)."""
        return self.urls[self._current]

    def _note(self, url: str, problem: str) -> None:
        with self._lock:
            self.failures.append((url, problem))
            del self.failures[:-50]

    def _advance(self, index: int) -> None:
        with self._lock:
            if self._current == index and len(self.urls) > 1:
                self._current = (index + 1) % len(self.urls)
                log.warning("rpc failover: %s -> %s", self.urls[index], self.urls[self._current])

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        body = self.encode_rpc_request(method, params)
        delay = self.retry.first_delay
        last = "no attempt"
        refused = 0  # URLs in a row that could not be reached at all
        attempt = 0
        for attempt in range(1, self.retry.attempts + 1):
            index = self._current
            url = self.urls[index]
            wait: float | None = None
            try:
                resp = self._session.post(
                    url,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=self.timeout,
                )
            except (requests.ConnectionError, requests.Timeout, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                self._advance(index)
                # A read timeout is a slow node, worth another try; a refused
                # connection is nobody there.
                refused = 0 if isinstance(exc, requests.ReadTimeout) else refused + 1
                if refused >= len(self.urls):
                    # Nothing listens anywhere: an outage. Say so now and let the
                    # caller's retry policy do the (longer) backoff.
                    self._note(url, last)
                    break
            else:
                refused = 0
                if resp.status_code == 200:
                    try:
                        decoded: RPCResponse = json.loads(resp.content)
                    except ValueError:
                        last = f"unreadable answer ({len(resp.content)} bytes)"
                        self._advance(index)
                    else:
                        if isinstance(decoded, dict) and (
                            "result" in decoded or "error" in decoded
                        ):
                            return decoded
                        last = "answer is not a JSON-RPC response"
                        self._advance(index)
                elif resp.status_code == 429:
                    # Throttled: the endpoint is fine, just busy. Wait what it asks, and
                    # let another endpoint take the load meanwhile if there is one.
                    last = f"HTTP 429 (Retry-After {resp.headers.get('Retry-After')})"
                    wait = retry_after_seconds(resp.headers.get("Retry-After"))
                    self._advance(index)
                else:
                    last = f"HTTP {resp.status_code}"
                    self._advance(index)
            self._note(url, last)
            if attempt == self.retry.attempts:
                break
            pause = min(wait, self.retry.max_retry_after) if wait is not None else delay
            if len(self.urls) > 1 and wait is None and attempt % len(self.urls) != 0:
                pause = 0.0  # try the next URL at once; back off after a full round
            log.info("rpc %s: %s from %s; retry %d in %.2fs", method, last, url, attempt, pause)
            if pause > 0:
                self._sleep(pause)
            if wait is None and pause > 0:
                delay = min(delay * 2, self.retry.max_delay)
        raise RpcUnavailable(
            f"{method}: no RPC answered after {attempt} tries ({', '.join(self.urls)}): {last}"
        )

    def is_connected(self, show_traceback: bool = False) -> bool:
        try:
            self.make_request(RPCEndpoint("web3_clientVersion"), [])
        except RpcUnavailable:
            if show_traceback:
                raise
            return False
        return True
