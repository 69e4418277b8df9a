"""Fixtures for the host worker suite (helpers live in tests/support: host_env, worker,
protocol_client, tcp_proxy, accounts, waits): a deployed marketplace on the test anvil, the
bundled model (one engine per test module) and workers on real loopback sockets."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak
from support.accounts import test_key
from support.host_env import FEE_BPS, HOST_MIN_PRICE, OTHER_MODEL, USDC_UNIT, HostEnv
from support.worker import WorkerThread

from fabstir import models
from fabstir.chain.params import DeployParams
from fabstir.chain.system import ETH, Roles, deploy_system
from fabstir.host.config import HostConfig, Limits
from fabstir.host.engines.llama import LlamaBatchEngine


@pytest.fixture(scope="session")
def hostenv(project: Any, accounts: Any, chain: Any, networks: Any) -> HostEnv:
    deployer, curator, treasurer, slasher = accounts[0], accounts[1], accounts[2], accounts[3]
    host, other_host, client, client2 = accounts[5], accounts[6], accounts[8], accounts[9]
    host_key = test_key(5)
    assert host_key.address == host.address
    params = DeployParams(fee_bps=FEE_BPS, settlement_window=3600)
    roles = Roles(curator=curator, slasher=slasher, treasurer=treasurer)
    s = deploy_system(project, deployer, params, roles)

    entry = models.find()
    s.model_registry.addModel(
        entry.repo, entry.file, bytes.fromhex(entry.sha256), entry.size, "{}", sender=curator
    )
    model_id = bytes.fromhex(entry.model_id[2:])
    s.model_registry.approveModel(model_id, sender=curator)
    s.model_registry.addModel(*OTHER_MODEL, b"\xaa" * 32, 1234, "{}", sender=curator)
    other_model_id = keccak(text="/".join(OTHER_MODEL))
    s.model_registry.approveModel(other_model_id, sender=curator)

    stake = params.min_stake
    for h in (host, other_host):
        s.fab.transfer(h, stake, sender=deployer)
        s.fab.approve(s.node_registry, stake, sender=h)
        s.node_registry.register(
            stake,
            "ws://127.0.0.1:8080",
            "{}",
            [model_id, other_model_id],
            [ETH, s.usdc.address],
            [10**9, HOST_MIN_PRICE],
            sender=h,
        )
    for c in (client, client2):
        s.usdc.mint(c, 10_000 * USDC_UNIT, sender=deployer)
        s.usdc.approve(s.marketplace, 2**256 - 1, sender=c)
        s.marketplace.deposit(s.usdc, 5_000 * USDC_UNIT, sender=c)

    return HostEnv(
        system=s,
        deployer=deployer,
        curator=curator,
        host=host,
        host_key=host_key,
        other_host=other_host,
        client=client,
        client2=client2,
        model_id=model_id,
        other_model_id=other_model_id,
        rpc_url=str(networks.provider.uri),
        addresses=s.addresses(),
        chain=chain,
    )


@pytest.fixture(scope="module")
def model_path() -> Path:
    path = models.local_path(models.find())
    if not path.is_file():
        pytest.skip(f"bundled model not fetched ({path}); run `fabstir models fetch`")
    return path


@pytest.fixture(scope="module")
def engine(model_path: Path) -> Iterator[LlamaBatchEngine]:
    # One thread: on a CPU shared with other busy processes llama.cpp's spinning thread
    # barriers make two threads several times slower than one.
    eng = LlamaBatchEngine(model_path, n_ctx=1024, max_sequences=8, n_threads=1)
    yield eng
    eng.close()


@pytest.fixture
def make_config(hostenv: HostEnv, tmp_path: Path) -> Callable[..., HostConfig]:
    """`make_config(**overrides)`: a worker config for this test (port 0, fresh db)."""
    counter = itertools.count()

    def make(limits: Limits | None = None, **overrides: Any) -> HostConfig:
        base: dict[str, Any] = dict(
            rpc_url=hostenv.rpc_url,
            private_key=hostenv.host_key.key.hex(),
            addresses=hostenv.addresses,
            port=0,
            db_path=tmp_path / f"host-{next(counter)}.db",
            settlement_interval=0.5,
            chain_poll_interval=5.0,
            settlement_coalesce=0.1,
            idle_session_timeout=600.0,
            expiry_margin=30.0,
            shutdown_timeout=30.0,
            rpc_retry_attempts=3,
            rpc_timeout=10.0,
            limits=limits or Limits(max_tokens_per_request=64, receipt_timeout=10.0),
        )
        base.update(overrides)
        return HostConfig(**base)

    return make


@pytest.fixture
def start_worker(
    make_config: Callable[..., HostConfig], engine: LlamaBatchEngine
) -> Iterator[Callable[..., WorkerThread]]:
    """`start_worker(**config overrides) -> WorkerThread`, stopped at teardown."""
    started: list[WorkerThread] = []

    def start(config: HostConfig | None = None, **overrides: Any) -> WorkerThread:
        w = WorkerThread(config or make_config(**overrides), engine)
        started.append(w)
        return w.start()

    yield start
    for w in started:
        w.stop()
