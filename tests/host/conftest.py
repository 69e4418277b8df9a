"""Fixtures for the host worker suite (helpers live in tests/support: host_env, worker,
protocol_client, tcp_proxy, accounts, waits): the root ``system`` with this suite's
actors on it, the bundled model (one engine per test module) and workers on real
loopback sockets.

The actors are set up per test module, as every suite's on ``system`` (the root
conftest says why). Workers are started per test (``start_worker``), so a worker only
ever sees the chain state of the test it serves: ape reverts the chain after each test,
after the worker has stopped."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak
from support.accounts import test_key, write_key_file
from support.host_env import (
    FEE_BPS,
    HOST_MIN_PRICE,
    OTHER_MODEL,
    USDC_UNIT,
    HostEnv,
    addresses_file,
)
from support.worker import WorkerThread

from fabstir import models
from fabstir.chain.params import DeployParams
from fabstir.chain.system import ETH
from fabstir.host.config import HostConfig, Limits
from fabstir.host.engines.llama import LlamaBatchEngine


@pytest.fixture(scope="module")
def hostenv(
    system: Any,
    chain: Any,
    networks: Any,
    admin: Any,
    curator: Any,
    hosts: list[Any],
    clients: list[Any],
    add_system_model: Callable[..., Any],
    register_system_host: Callable[..., Any],
    fund_client: Callable[..., None],
    open_session: Callable[..., int],
) -> HostEnv:
    defaults = DeployParams()
    assert (defaults.fee_bps, defaults.settlement_window) == (FEE_BPS, 3600)
    s, deployer = system, admin
    host, other_host = hosts[0], hosts[1]
    client, client2 = clients[0], clients[1]
    host_key = test_key(5)
    assert host_key.address == host.address

    entry = models.find()
    model_id = bytes(
        add_system_model(
            entry.repo, entry.file, sha256=bytes.fromhex(entry.sha256), size=entry.size
        )
    )
    assert model_id == bytes.fromhex(entry.model_id[2:])
    other_model_id = bytes(add_system_model(*OTHER_MODEL, sha256=b"\xaa" * 32, size=1234))
    assert other_model_id == keccak(text="/".join(OTHER_MODEL))

    for h in (host, other_host):
        register_system_host(
            h,
            [model_id, other_model_id],
            {ETH: 10**9, s.usdc.address: HOST_MIN_PRICE},
            stake=defaults.min_stake,
            api_url="ws://127.0.0.1:8080",
            metadata="{}",
        )
    for c in (client, client2):
        fund_client(c, 10_000 * USDC_UNIT, deposit=5_000 * USDC_UNIT)

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
        opener=open_session,
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


@pytest.fixture
def worker_args(hostenv: HostEnv, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """Command line and environment of `python -m fabstir.host` as a child process
    (`support.worker.WorkerProcess`, for kill -9): the host's key in a 0600 file, its
    database at `tmp_path / "host.db"`, a small engine, fast settlement."""
    key_file = write_key_file(tmp_path / "host.key", hostenv.host_key)
    args = [
        "--rpc-url", hostenv.rpc_url,
        "--addresses", str(addresses_file(tmp_path / "addresses.json", hostenv.addresses)),
        "--db", str(tmp_path / "host.db"),
        "--port", "0",
        "--settlement-interval", "0.5",
        "--settlement-coalesce", "0.1",
        "--n-ctx", "512",
        "--max-sequences", "2",
        "--n-threads", "1",
        "--max-tokens-per-request", "32",
        "--log-level", "INFO",
    ]  # fmt: skip
    return args, {**os.environ, "FABSTIR_HOST_KEY_FILE": str(key_file)}
