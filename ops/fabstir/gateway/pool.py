"""Sessions behind the gateway: which host, which session, how much money.

A request asks `acquire` for a session of its model. The pool keeps up to
`sessions_per_host` sessions per (host, model), each serving one request at a
time (the wire protocol's rule), and reuses them across requests: receipts stay
cumulative per session, so one session's create and settlement are shared by
every request it serves. Hosts are ranked by price (or measured latency, or one
fixed host); one that cannot be reached or fails before its first token is set
aside for `host_cooldown` seconds and the request goes to the next. A chain
outage (the gateway's RPC unreachable) is nobody's host's fault: no host is set aside
for it and the request ends with 503 chain_unavailable.

Money: a session is opened only when the budget covers its deposit (what is
committed is every open session's deposit plus every closed session's cost, from
the ledger), so the gateway never escrows beyond the budget. A session whose
remaining tokens fall below one request's cap is retired: it takes no new
request, is closed (the host settles its newest receipt) and, budget allowing, a
fresh one is opened in the background before the next request needs it.
Sessions idle for `idle_timeout` are closed; `close_all` closes everything on
shutdown, and `recover` closes what a previous run (killed with -9) left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import aiohttp

from fabstir import models as catalogue
from fabstir.gateway.api import ApiError, budget_exhausted, model_not_found, no_host
from fabstir.gateway.ledger import Ledger
from fabstir.sdk.errors import SDKError, SDKErrorCode
from fabstir.sdk.types import HostInfo, SessionStatus

if TYPE_CHECKING:
    from fabstir.sdk.sdk import FabstirSDK
    from fabstir.sdk.session import SessionManager

log = logging.getLogger("fabstir.gateway")

Strategy = Literal["cheapest", "latency", "fixed"]

#: Errors that say the wallet cannot fund a session at all (not the host's fault).
_FUNDING_ERRORS = frozenset({SDKErrorCode.INSUFFICIENT_BALANCE, SDKErrorCode.DEPOSIT_TOO_LOW})
#: Errors that say the gateway's own chain (its RPC) is unreachable: every host would
#: fail the same way and none is at fault, so no host is set aside for them (the client
#: gets 503 chain_unavailable). A host's SERVICE_UNAVAILABLE is not here: the code also
#: means shutting down, engine down or not accepting, and the frame cannot tell which.
_CHAIN_ERRORS = frozenset({SDKErrorCode.NETWORK_ERROR})


@dataclass(frozen=True)
class PoolConfig:
    """How the gateway spends. Amounts are the payment token's smallest units."""

    budget: int
    payment_token: str = "USDC"
    deposit: int = 1_000_000
    max_tokens: int = 512
    sessions_per_host: int = 4
    strategy: Strategy = "cheapest"
    fixed_host: str | None = None
    idle_timeout: float = 300.0
    duration: int = 3600
    proof_interval: int = 64
    host_cooldown: float = 30.0
    queue_timeout: float = 60.0
    settle_timeout: float = 30.0
    models_ttl: float = 10.0
    #: A close that meets a chain outage is retried this often, waiting this long
    #: first (doubling): 1 + 2 + ... + 64 s outlasts a two-minute outage.
    close_attempts: int = 8
    close_retry_delay: float = 1.0


@dataclass(frozen=True)
class ModelEntry:
    """An approved model some active host serves (in the payment token)."""

    name: str
    model_id: str
    hosts: tuple[HostInfo, ...]
    best_price: int
    aliases: frozenset[str]


@dataclass
class PooledSession:
    session_id: int
    host: str
    model_id: str
    price: int
    max_tokens: int
    tokens: int = 0
    busy: bool = False
    retired: bool = False
    last_used: float = field(default_factory=time.monotonic)

    @property
    def remaining(self) -> int:
        return self.max_tokens - self.tokens


class SessionPool:
    """See the module docstring. One per gateway; all methods run on its event loop."""

    def __init__(self, sdk: FabstirSDK, ledger: Ledger, config: PoolConfig) -> None:
        self._sdk = sdk
        self._sm: SessionManager = sdk.get_session_manager()
        self._ledger = ledger
        self.config = config
        self._token = sdk.get_token(config.payment_token)
        self._sessions: dict[int, PooledSession] = {}
        self._opening: dict[tuple[str, str], int] = {}
        self._reserved = 0
        self._changed = asyncio.Condition()
        self._down: dict[str, float] = {}
        self._latency: dict[str, float] = {}
        self._models: tuple[float, list[ModelEntry]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def session_manager(self) -> SessionManager:
        return self._sm

    @property
    def token_symbol(self) -> str:
        return self._token.symbol

    def format(self, amount: int) -> str:
        return self._token.format(amount)

    # ------------------------------------------------------------------ models

    async def models(self) -> list[ModelEntry]:
        """Approved models with at least one active host that takes the payment token."""
        now = time.monotonic()
        if self._models is not None and now - self._models[0] < self.config.models_ttl:
            return self._models[1]
        entries = await asyncio.to_thread(self._read_models)
        if self.config.strategy == "latency":
            hosts = {h.address: h.api_url for m in entries for h in m.hosts}
            await asyncio.gather(*(self._probe(a, url) for a, url in hosts.items()))
        self._models = (now, entries)
        return entries

    async def _probe(self, host: str, url: str) -> None:
        try:
            self._latency[host] = await probe_latency(url)
        except (aiohttp.ClientError, OSError, TimeoutError):
            self._latency[host] = float("inf")

    def _read_models(self) -> list[ModelEntry]:
        token = self._token.address
        keys = {m.model_id.lower(): m.key for m in catalogue.load_catalogue()}
        out = []
        for m in self._sdk.get_model_manager().get_all_approved_models():
            hosts = [
                h
                for h in self._sdk.get_host_manager().find_hosts_for_model(m.id, token)
                if h.is_active and h.min_prices.get(token, 0) > 0
            ]
            if not hosts:
                continue
            name = f"{m.huggingface_repo}/{m.file_name}"
            aliases = {name, m.id.lower()}
            if m.id.lower() in keys:
                aliases.add(keys[m.id.lower()])
            out.append(
                ModelEntry(
                    name=name,
                    model_id=m.id,
                    hosts=tuple(hosts),
                    best_price=min(h.min_prices[token] for h in hosts),
                    aliases=frozenset(aliases),
                )
            )
        return out

    async def resolve(self, name: str) -> ModelEntry:
        """The model a request names (its `repo/file`, 0x id or catalogue key): 404 for a
        model no host serves or that is not approved."""
        key = name.strip()
        for entry in await self.models():
            if key in entry.aliases or key.lower() in entry.aliases:
                return entry
        raise model_not_found(name)

    # ------------------------------------------------------------ acquisition

    async def acquire(self, model: ModelEntry, want: int, exclude: set[str]) -> PooledSession:
        """A session of `model` reserved for one request (release it afterwards).

        ApiError 503 when no host is left to try or every session stays busy past
        `queue_timeout`; 402 when the budget (or the wallet) cannot fund a session and
        no open one has tokens left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.queue_timeout
        while True:
            async with self._changed:
                decision = self._decide(model, want, exclude)
                if isinstance(decision, PooledSession):
                    decision.busy = True
                    return decision
                if decision is None:
                    left = deadline - loop.time()
                    if left <= 0:
                        raise no_host(model.name, "every session is busy")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), left)
                    continue
                host, deposit = decision
                key = (host.address, model.model_id)
                self._opening[key] = self._opening.get(key, 0) + 1
                self._reserved += deposit
            opened: PooledSession | None = None
            try:
                opened = await self._open(model, host, deposit)
            except ApiError:
                raise
            except (SDKError, OSError, TimeoutError) as exc:
                if isinstance(exc, SDKError) and exc.code in _CHAIN_ERRORS:
                    # The chain is down, not the host: setting it aside would turn
                    # requests away for host_cooldown after the chain is back.
                    log.warning("no session with host %s: the chain is unreachable", host.address)
                    raise
                log.warning("host %s failed to open a session: %s", host.address, exc)
                self._set_down(host.address)
                exclude.add(host.address)
                continue
            finally:
                # One critical section: were the new session registered in a later one,
                # a waiter could run in between, count neither it nor its opening, and
                # open one more than sessions_per_host (or spend its reserved deposit).
                async with self._changed:
                    self._opening[key] -= 1
                    self._reserved -= deposit
                    if opened is not None:
                        opened.busy = True
                        self._sessions[opened.session_id] = opened
                    self._changed.notify_all()
            return opened

    def _decide(
        self, model: ModelEntry, want: int, exclude: set[str]
    ) -> PooledSession | tuple[HostInfo, int] | None:
        """An idle session to use, a host and deposit to open one with, or None to wait.
        Raises the 503/402 ApiErrors."""
        hosts = self._ranked_hosts(model, exclude)
        if not hosts:
            raise no_host(model.name)
        mine = [
            s
            for s in self._sessions.values()
            if s.model_id == model.model_id and not s.retired and s.remaining > 0
        ]
        for host in hosts:
            idle = [s for s in mine if s.host == host.address and not s.busy]
            if idle:
                return max(idle, key=lambda s: (s.remaining >= want, -s.session_id))
        host = hosts[0]
        price = host.min_prices[self._token.address]
        running = sum(1 for s in mine if s.host == host.address)
        if running + self._opening.get((host.address, model.model_id), 0) >= (
            self.config.sessions_per_host
        ):
            return None
        left = self.config.budget - self._ledger.committed(self._token.symbol) - self._reserved
        deposit = min(self.config.deposit, left)
        if deposit // price < max(self.config.proof_interval, 1):
            if mine or any(self._opening.values()):
                return None  # a session may free up (or one is opening): wait for it
            raise budget_exhausted(
                f"the gateway's budget of {self.format(self.config.budget)} "
                f"{self.token_symbol} is spent ({self.format(max(left, 0))} left, a session "
                f"needs {self.format(price * self.config.proof_interval)})"
            )
        return host, deposit

    def _ranked_hosts(self, model: ModelEntry, exclude: set[str]) -> list[HostInfo]:
        now = time.monotonic()
        hosts = [
            h
            for h in model.hosts
            if h.address not in exclude and self._down.get(h.address, 0.0) <= now
        ]
        if self.config.strategy == "fixed":
            fixed = (self.config.fixed_host or "").lower()
            return [h for h in hosts if h.address.lower() == fixed]
        token = self._token.address
        if self.config.strategy == "latency":
            return sorted(hosts, key=lambda h: (self._latency.get(h.address, 0.0), h.address))
        return sorted(hosts, key=lambda h: (h.min_prices[token], h.address.lower()))

    def _set_down(self, host: str) -> None:
        self._down[host] = time.monotonic() + self.config.host_cooldown

    async def _open(self, model: ModelEntry, host: HostInfo, deposit: int) -> PooledSession:
        price = host.min_prices[self._token.address]
        config = {
            "depositAmount": self._token.format(deposit),
            "pricePerToken": price,
            "duration": self.config.duration,
            "proofInterval": self.config.proof_interval,
        }
        started = time.monotonic()
        try:
            # The pool closes an orphan itself (and books it), so the SDK must not.
            result = await self._sm.start_session(
                model.model_id,
                host.address,
                config,
                payment_token=self._token.symbol,
                close_on_failure=False,
            )
        except SDKError as exc:
            orphan = exc.details.get("session_id")
            if isinstance(orphan, int):
                # Escrowed but unusable (the host refused or vanished): the SDK asked the
                # chain to close it; record it so the budget and `spend` know of it.
                self._record(orphan, host.address, model.model_id, price, deposit)
                if "close_tx" in exc.details:
                    self._ledger.session_closed(orphan, 0)
                else:
                    self._spawn(self._close_by_id(orphan))
            if exc.code in _FUNDING_ERRORS:
                raise budget_exhausted(f"the wallet cannot fund a session: {exc.message}") from exc
            raise
        self._latency[host.address] = time.monotonic() - started
        self._record(result.session_id, host.address, model.model_id, price, deposit)
        log.info(
            "session %s opened with host %s (%s %s, %s tokens)",
            result.session_id,
            host.address,
            self._token.format(deposit),
            self.token_symbol,
            deposit // price,
        )
        return PooledSession(
            session_id=result.session_id,
            host=host.address,
            model_id=model.model_id,
            price=price,
            max_tokens=deposit // price,
        )

    def _record(self, session_id: int, host: str, model_id: str, price: int, deposit: int) -> None:
        self._ledger.session_opened(
            session_id,
            host=host,
            model_id=model_id,
            token=self._token.symbol,
            price=price,
            deposit=deposit,
            max_tokens=deposit // price,
        )

    # ---------------------------------------------------------------- release

    async def release(
        self, s: PooledSession, *, failed: SDKError | None = None, host_fault: bool = False
    ) -> None:
        """Give a session back after a request. A failed session is retired and closed;
        `host_fault` also sets its host aside. A session with less than one request's
        cap left is retired, closed, and replaced in the background."""
        s.tokens = self._sm.tokens_received(s.session_id)
        s.last_used = time.monotonic()
        replace = False
        async with self._changed:
            s.busy = False
            if failed is not None or s.remaining < self.config.max_tokens:
                s.retired = True
                replace = failed is None
            if host_fault:
                self._set_down(s.host)
            self._changed.notify_all()
        if s.retired:
            self._spawn(self._close(s))
        if replace and not self._closed:
            self._spawn(self._prefetch(s.model_id))

    async def _prefetch(self, model_id: str) -> None:
        with contextlib.suppress(ApiError, SDKError, OSError):
            model = next((m for m in await self.models() if m.model_id == model_id), None)
            if model is None:
                return
            s = await self.acquire(model, self.config.max_tokens, set())
            await self.release(s)

    # ---------------------------------------------------------------- closing

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, s: PooledSession) -> None:
        async with self._changed:
            self._sessions.pop(s.session_id, None)
            self._changed.notify_all()
        await self._close_by_id(s.session_id)

    async def _close_by_id(self, session_id: int) -> None:
        """Close a session; a chain outage (NETWORK_ERROR) is waited out with backoff,
        so a close begun during one is not lost (nor its exception left unretrieved)."""
        delay = self.config.close_retry_delay
        for attempt in range(self.config.close_attempts):
            try:
                await self._close_once(session_id)
                return
            except SDKError as exc:
                last = attempt == self.config.close_attempts - 1
                if exc.code is not SDKErrorCode.NETWORK_ERROR or last:
                    log.warning("session %s could not be closed: %s", session_id, exc)
                    return
                log.info("closing session %s: chain unreachable, retry in %.1fs", session_id, delay)
                await asyncio.sleep(delay)
                delay *= 2

    def note_receipts(self, session_id: int) -> None:
        """Book the newest receipt signed for the session and the newest the host
        acknowledged, so what the host is paid can be checked against them later."""
        with contextlib.suppress(SDKError):  # not live in this process: nothing new
            receipt = self._sm.latest_receipt(session_id)
            self._ledger.receipts(
                session_id,
                signed=receipt.tokens_used if receipt is not None else 0,
                acked=self._sm.acknowledged_tokens(session_id),
            )

    async def _close_once(self, session_id: int) -> None:
        try:
            try:
                result = await self._sm.complete_session(
                    session_id, settle_timeout=self.config.settle_timeout
                )
            finally:
                # complete_session hands over the newest receipt first: book what it got.
                self.note_receipts(session_id)
            tokens = result.tokens_used
            log.info(
                "session %s closed: %s tokens, cost %s %s (%s)",
                session_id,
                tokens,
                result.cost,
                self.token_symbol,
                "settled by the host" if result.settled_by_host else "close requested on chain",
            )
        except SDKError as exc:
            info = await asyncio.to_thread(
                self._sdk.get_session_job_manager().get_session, session_id
            )
            if info.status == SessionStatus.ACTIVE:
                if exc.code is SDKErrorCode.NETWORK_ERROR:
                    raise  # the close did not get through: _close_by_id tries again
                if exc.code is SDKErrorCode.SESSION_NOT_FOUND:
                    # Opened on chain but start_session failed before it kept any client
                    # state (a chain outage between create and connect): this wallet
                    # signed no receipt for it, so close it with none; the host can
                    # still settle a newer one within the settlement window.
                    await asyncio.to_thread(
                        self._sdk.get_session_job_manager().request_close, session_id
                    )
                    log.info("session %s had no client state: close requested", session_id)
                    self._ledger.session_closed(session_id, 0)
                    return
                log.warning("session %s could not be closed: %s", session_id, exc)
                return
            tokens = info.tokens_used
        self._ledger.session_closed(session_id, tokens)

    async def reap_idle(self) -> None:
        """Close sessions idle longer than `idle_timeout` (run periodically)."""
        now = time.monotonic()
        async with self._changed:
            idle = [
                s
                for s in self._sessions.values()
                if not s.busy and not s.retired and now - s.last_used >= self.config.idle_timeout
            ]
            for s in idle:
                s.retired = True
        for s in idle:
            log.info("session %s idle for %.0fs: closing", s.session_id, now - s.last_used)
            self._spawn(self._close(s))

    async def recover(self) -> list[int]:
        """Close the sessions a previous run left open (it died without closing them):
        the host settles its newest acknowledged receipt. Returns their ids."""
        left = [r.session_id for r in self._ledger.sessions("open")]
        await asyncio.gather(*(self._recover_one(i) for i in left))
        return left

    async def _recover_one(self, session_id: int) -> None:
        with contextlib.suppress(SDKError, OSError, TimeoutError):
            await self._sm.resume_session(session_id)  # so the close reaches the host now
        await self._close_by_id(session_id)

    async def close_all(self) -> None:
        """Close every session (shutdown) and wait for the closes to finish."""
        self._closed = True
        async with self._changed:
            sessions = list(self._sessions.values())
            for s in sessions:
                s.retired = True
        for s in sessions:
            self._spawn(self._close(s))
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def snapshot(self) -> Mapping[str, Any]:
        """For /health: sessions by state and hosts set aside."""
        now = time.monotonic()
        return {
            "sessions": [
                {
                    "session_id": s.session_id,
                    "host": s.host,
                    "remaining_tokens": s.remaining,
                    "busy": s.busy,
                }
                for s in self._sessions.values()
            ],
            "hosts_set_aside": sorted(h for h, until in self._down.items() if until > now),
        }


async def probe_latency(url: str, timeout: float = 5.0) -> float:
    """Seconds for the host's /health to answer (its ws:// URL read as http://)."""
    http = url.replace("wss://", "https://", 1).replace("ws://", "http://", 1).rstrip("/")
    started = time.monotonic()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as client,
        client.get(f"{http}/health") as response,
    ):
        await response.read()
    return time.monotonic() - started
