"""`HostWorker`: the reference host process, tying engine, server, store and settlement.

Start-up order: connect to the chain (and check its id), read the ModelRegistry
entry of the model it will announce, open the store of this chain (keyed by
chain id, genesis block and marketplace: see store.py), build the engine named
by the configuration through `engines.build_engine` (each builder checks the
model against the registry entry as its engine allows: the file's sha256 and
size, or what an upstream exposes; a mismatch refuses to serve), listen, start
the settlement loop (whose first pass resumes whatever the store holds).

Shutdown (SIGINT/SIGTERM, or `stop()`): stop accepting, end every connection
with SERVICE_UNAVAILABLE (running generations are cancelled), mark every open
session `closing`, run a final settlement pass (bounded by
`shutdown_timeout`; what it cannot settle stays in the store for the next
start), close the engine and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fabstir import models
from fabstir.chain.client import ChainClient, RetryPolicy
from fabstir.chain.logscan import deployment_block
from fabstir.chain.marketplace import ModelStatus
from fabstir.chain.transactions import TxSender, confirmations_for_chain, fee_policy_for_chain
from fabstir.chain.txjournal import TxJournal
from fabstir.errors import SDKErrorCode
from fabstir.host.chain import HostChain, ModelEntry
from fabstir.host.config import ConfigError, HostConfig
from fabstir.host.engines import EngineSpec, build_engine
from fabstir.host.engines.base import Engine, ModelVerificationError, verify_model_file
from fabstir.host.metrics import HostMetrics, kv
from fabstir.host.server import HostServer, ModelInfo
from fabstir.host.settlement import SettlementLoop
from fabstir.host.store import ChainIdentity, SessionStore
from fabstir.protocol.messages import PROTOCOL_VERSION
from fabstir.protocol.receipts import Eip712Domain

log = logging.getLogger(__name__)


class HostWorker:
    """The whole worker; `await start()`, then `await stop()` (or `serve()` for both)."""

    def __init__(self, config: HostConfig, *, engine: Engine | None = None) -> None:
        self.config = config
        self.metrics = HostMetrics()
        self._given_engine = engine
        self.engine: Engine | None = engine
        self.store: SessionStore | None = None
        self.chain: HostChain | None = None
        self.server: HostServer | None = None
        self.settlement: SettlementLoop | None = None
        self.entry = models.find(config.model)
        self.model_id = self.entry.model_id
        self.chain_id: int | None = None
        self.address: str | None = None
        self._state = "new"
        self._stop_lock = asyncio.Lock()

    # -- properties

    @property
    def model_path(self) -> Path:
        """The model file an in-process engine loads (the given engine's, if it has one)."""
        if self.config.model_path is not None:
            return Path(self.config.model_path)
        if self._given_engine is not None and self._given_engine.model_path is not None:
            return self._given_engine.model_path
        return models.local_path(self.entry)

    @property
    def url(self) -> str:
        assert self.server is not None, "the worker is not started"
        return self.server.url

    @property
    def port(self) -> int:
        assert self.server is not None, "the worker is not started"
        return self.server.port

    # -- start

    async def start(self) -> None:
        cfg = self.config
        if self._state != "new":
            raise RuntimeError("a HostWorker starts once")
        self._state = "starting"
        addresses = cfg.resolve_addresses()
        client = ChainClient(
            cfg.rpc_url,
            addresses,
            timeout=cfg.rpc_timeout,
            retry=RetryPolicy(attempts=cfg.rpc_retry_attempts),
        )
        # A settlement not mined within receipt_timeout fails its pass (TxPending)
        # and is picked up by the next one, so the loop never blocks for long.
        sender = TxSender(
            client,
            cfg.private_key,
            receipt_timeout=30.0,
            replace_after=15.0,
            fees=await asyncio.to_thread(lambda: fee_policy_for_chain(client.chain_id)),
            # Settled means final: a reorg before this depth re-sends the same tx.
            confirmations=cfg.confirmations or confirmations_for_chain(client.chain_id),
        )
        first_block = await asyncio.to_thread(_first_block, cfg, client, addresses)
        chain = self.chain = HostChain(client, sender, first_block=first_block)
        self.address = chain.address
        chain_id = self.chain_id = await chain.chain_id()
        if cfg.chain_id is not None and cfg.chain_id != chain_id:
            raise ConfigError(f"the RPC serves chain {chain_id}, not the configured {cfg.chain_id}")
        identity = ChainIdentity(chain_id, await chain.genesis_hash(), chain.marketplace_address)
        registry = await self.registry_entry(chain)
        if not await chain.serves_model(self.model_id):
            log.warning(
                kv(
                    "host_not_registered_for_model",
                    address=chain.address,
                    model_id=self.model_id,
                    hint="register (fabstir host register) or no session can name this host",
                )
            )
        db_path = cfg.db_path or cfg.store_dir() / identity.file_name
        self.store = SessionStore(db_path, identity)
        await self.store.open()
        log.info(kv("store_opened", path=str(db_path), chain_id=chain_id))
        # Every settlement is journalled before it is sent, next to the store it
        # belongs to (db_path is per chain when not given); after a crash the
        # journal's unfinished ones are adopted (found by hash, re-sent as signed),
        # so a restart never sends a second settlement beside a pending one.
        journal = TxJournal(Path(f"{db_path}.txlog"))
        sender.on_sent = journal.append
        unfinished = await asyncio.to_thread(sender.adopt, journal.load())
        journal.keep(unfinished)
        if unfinished:
            log.warning(kv("adopted_pending_transactions", count=len(unfinished)))
        if self.engine is None:
            # The builder checks the model against the registry as its engine allows
            # (the file's sha256, or what the upstream exposes) before it serves.
            spec = EngineSpec(cfg, self.model_path, registry.sha256, registry.size, self.metrics)
            self.engine = await build_engine(spec)
        elif (given := self.engine.model_path) is not None:
            await verify_model_file(given, registry.sha256, registry.size)
        domain = Eip712Domain(chain_id, chain.marketplace_address)
        self.server = HostServer(
            config=cfg,
            engine=self.engine,
            store=self.store,
            chain=chain,
            metrics=self.metrics,
            domain=domain,
            model=ModelInfo(
                model_id=self.model_id,
                name=self.entry.key,
                file=self.entry.file,
                sha256=registry.sha256,
                n_ctx=self.engine.n_ctx,
            ),
            health=self.health,
            refresh_metrics=self._refresh_metrics,
            on_session_closing=self._wake_settlement,
        )
        window = await chain.settlement_window()
        post_before = cfg.post_receipt_before
        if post_before is None:
            post_before = default_post_receipt_before(chain_id, window)
        self.settlement = SettlementLoop(
            store=self.store,
            chain=chain,
            metrics=self.metrics,
            hooks=self.server,
            interval=cfg.settlement_interval,
            poll_interval=cfg.chain_poll_interval,
            coalesce=cfg.settlement_coalesce,
            idle_timeout=cfg.idle_session_timeout,
            expiry_margin=cfg.expiry_margin,
            post_receipt_value=cfg.post_receipt_value,
            post_receipt_before=post_before,
            max_settle_fee=cfg.max_settle_fee,
            settle_defer_max=cfg.settle_defer_max,
            settlement_window=window,
            recheck_window=cfg.settled_recheck_window,
        )
        await self.server.start()
        counts = await self.store.counts()
        self.settlement.start()
        self._state = "running"
        log.info(
            kv(
                "ready",
                url=self.server.url,
                public_url=cfg.public_url,
                address=chain.address,
                chain_id=chain_id,
                marketplace=chain.marketplace_address,
                model=self.entry.key,
                model_id=self.model_id,
                open=counts["open"],
                closing=counts["closing"],
            )
        )

    def _wake_settlement(self) -> None:
        """A session is closing: settle soon. (The server is built before the settlement
        loop, which needs the server, so it is handed this method, not the loop.)"""
        if self.settlement is not None:
            self.settlement.wake()

    async def registry_entry(self, chain: HostChain) -> ModelEntry:
        """The ModelRegistry entry of the announced model (ModelVerificationError if none)."""
        entry = await chain.model(self.model_id)
        if entry is None:
            raise ModelVerificationError(
                SDKErrorCode.MODEL_NOT_FOUND,
                f"model {self.entry.repo}/{self.entry.file} ({self.model_id}) is not in the "
                "ModelRegistry",
            )
        if entry.status != ModelStatus.APPROVED:
            log.warning(
                kv("model_not_approved", model_id=self.model_id, status=entry.status.name.lower())
            )
        return entry

    # -- stop

    async def stop(self) -> None:
        """Graceful shutdown (idempotent); see the module docstring."""
        async with self._stop_lock:
            if self._state in ("stopped", "new"):
                self._state = "stopped"
                return
            self._state = "stopping"
            log.info(kv("shutting_down"))
            # A transaction wait must not outlive the shutdown timeout (a stuck
            # settlement): past it, every wait ends with TxPending at once.
            abort = (
                asyncio.get_running_loop().call_later(
                    self.config.shutdown_timeout, self.chain.sender.abort
                )
                if self.chain is not None
                else None
            )
            if self.server is not None:
                await self.server.shutdown()
            if self.settlement is not None:
                await self.settlement.stop()
            if self.store is not None and self.settlement is not None:
                for rec in await self.store.by_state("open"):
                    await self.store.mark_closing(rec.session_id, "shutdown")
                done = await self.settlement.final_pass(self.config.shutdown_timeout)
                left = len(await self.store.by_state("closing"))
                log.log(
                    logging.INFO if done else logging.WARNING,
                    kv("final_settlement", done=done, still_closing=left),
                )
            if abort is not None:
                abort.cancel()
            if self.engine is not None and self._given_engine is None:
                await self.engine.aclose()
            if self.store is not None:
                await self.store.close()
            self._state = "stopped"
            log.info(kv("stopped"))

    # -- observability

    async def health(self) -> dict[str, Any]:
        store, settlement, server = self.store, self.settlement, self.server
        counts = await store.counts() if store is not None else {}
        lag = await settlement.lag() if settlement is not None else 0.0
        engine = self.engine.health() if self.engine is not None else None
        degraded = (settlement is not None and settlement.last_error is not None) or (
            engine is not None and not engine["ok"]
        )
        return {
            "status": "ok"
            if self._state == "running" and not degraded
            else ("degraded" if self._state == "running" else self._state),
            "protocol_version": PROTOCOL_VERSION,
            "model": self.entry.key,
            "model_file": self.entry.file,
            "model_id": self.model_id,
            "chain_id": self.chain_id,
            "address": self.address,
            "marketplace": self.chain.marketplace_address if self.chain else None,
            "public_url": self.config.public_url,
            "sessions": {
                "open": counts.get("open", 0),
                "closing": counts.get("closing", 0),
                "settled": counts.get("settled", 0),
                "failed": counts.get("failed", 0),
                "connected": sum(1 for s in server.sessions.values() if s.owner is not None)
                if server is not None
                else 0,
            },
            "connections": len(server.connections) if server is not None else 0,
            "settlement": {
                "lag_seconds": round(lag, 3),
                "last_success": settlement.last_success if settlement else None,
                "last_error": settlement.last_error if settlement else None,
            },
            "engine": engine,
            "uptime_seconds": round(time.time() - self.metrics.started, 3),
        }

    async def _refresh_metrics(self) -> None:
        if self.settlement is not None:
            await self.settlement.refresh_gauges()


async def serve(
    config: HostConfig,
    *,
    engine: Engine | None = None,
    on_ready: Callable[[HostWorker], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a worker until SIGINT/SIGTERM (or `stop` is set), then shut it down gracefully.

    This is what `python -m fabstir.host` and `fabstir host serve` call.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    worker = HostWorker(config, engine=engine)
    try:
        await worker.start()
        if on_ready is not None:
            on_ready(worker)
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await worker.stop()


def default_post_receipt_before(chain_id: int, settlement_window: int) -> float | None:
    """`--post-receipt-before` when not given: off on local chains (sessions there are
    tests and demos); elsewhere the settlement window plus one hour, so receipts are
    posted during a session's last hour and a host that dies then loses at most one
    settlement pass's worth."""
    from fabstir.chain.local import LOCAL_CHAIN_ID

    if chain_id in (LOCAL_CHAIN_ID, 1337):
        return None
    return float(settlement_window + 3600)


def _first_block(cfg: HostConfig, client: ChainClient, addresses: dict[str, str]) -> int:
    """Where the worker's event scans start: the deployment record's first block, else
    the block the JobMarketplace was deployed in (found on chain)."""
    if cfg.addresses is None and cfg.chain_id is not None:
        from fabstir.chain.deployments import load_deployment

        return load_deployment(cfg.chain_id, cfg.deployments_dir).first_block
    return deployment_block(client, addresses["JobMarketplace"])
