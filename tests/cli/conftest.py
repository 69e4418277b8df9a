"""Fixtures for the CLI suite: per test module, a fresh FABSTIR_HOME, a local anvil
started with LocalChain on a free port, the contracts deployed and seeded through
`fabstir deploy --seed` (a subprocess, as a user runs it), and for the session tests
a real host worker (`python -m fabstir.host`) serving the bundled model.

Everything is module scoped and undone at the end of the module (environment
variables included), so the other suites of the same `ape test` run are not touched.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli import HOST, invoke, ok, run_json, test_key

from fabstir import models
from fabstir.chain.local import ChainInfo, LocalChain, free_port

_CLEARED = (
    "FABSTIR_RPC_URL",
    "FABSTIR_NETWORK",
    "FABSTIR_ACCOUNT",
    "FABSTIR_KEY_FILE",
    "FABSTIR_STORAGE_URL",
    "FABSTIR_CHAIN_ID",
    "FABSTIR_SDK_DEBUG",
    "APE_FOUNDRY_HOST",
)


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A FABSTIR_HOME (chain state, client storage) and deployments dir for the module."""
    home = tmp_path_factory.mktemp("fabstir-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("FABSTIR_HOME", str(home))
    mp.setenv("FABSTIR_DEPLOYMENTS_DIR", str(home / "deployments"))
    for name in _CLEARED:
        mp.delenv(name, raising=False)
    yield home
    mp.undo()


@pytest.fixture(scope="module")
def local_chain(cli_home: Path) -> Iterator[ChainInfo]:
    """The module's anvil, where `--network local` finds it ($FABSTIR_HOME/chain)."""
    lc = LocalChain(cli_home / "chain")
    info = lc.up(port=free_port(), persist=False)
    yield info
    lc.down()


@pytest.fixture(scope="module")
def deploy_args() -> tuple[str, ...]:
    """Extra `fabstir deploy` arguments; a module overrides it (e.g. --params FILE)."""
    return ()


@pytest.fixture(scope="module")
def host_prices() -> tuple[str, ...]:
    """The worker's `host register --price` values; a module overrides it."""
    return ("200",)


@pytest.fixture(scope="module")
def deployed(local_chain: ChainInfo, deploy_args: tuple[str, ...]) -> dict[str, Any]:
    """`fabstir deploy --seed` on the module's chain (subprocess); its JSON result."""
    data: dict[str, Any] = run_json("deploy", "--seed", *deploy_args)
    assert data["chain_id"] == local_chain.chain_id
    assert data["reused"] is False and data["seeded"]
    return data


@pytest.fixture(scope="module")
def model_path() -> Path:
    path = models.local_path(models.find())
    if not path.is_file():
        pytest.skip(f"bundled model not fetched ({path}); run `fabstir models fetch`")
    return path


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"host worker exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"host worker did not listen on {port}: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def worker(
    deployed: dict[str, Any],
    local_chain: ChainInfo,
    cli_home: Path,
    model_path: Path,
    host_prices: tuple[str, ...],
) -> Iterator[str]:
    """Host test:5 registered through `fabstir host register` and a real worker
    (`python -m fabstir.host`) serving the bundled model; yields its URL."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    prices = [arg for price in host_prices for arg in ("--price", price)]
    ok(invoke("host", "register", "--account", f"test:{HOST}", "--url", url, *prices))
    key_file = cli_home / "host.key"
    key_file.write_text(test_key(HOST) + "\n")
    key_file.chmod(0o600)
    log = cli_home / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "fabstir.host",
                "--rpc-url", local_chain.rpc_url,
                "--chain-id", str(local_chain.chain_id),
                "--deployments-dir", str(cli_home / "deployments"),
                "--model-path", str(model_path),
                "--port", str(port),
                "--db", str(cli_home / "host.db"),
                "--n-ctx", "1024",
                "--max-sequences", "2",
                "--settlement-interval", "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FABSTIR_HOST_KEY_FILE": str(key_file)},
        )  # fmt: skip
    try:
        _wait_for_port(port, proc, log, timeout=90)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
