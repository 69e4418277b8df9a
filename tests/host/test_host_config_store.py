"""The host's configuration surface, engine factory and store versioning (no chain, no
model): one dataclass behind both command lines, engines built by name, the schema
migration from the unversioned store, and the store's chain identity."""

from __future__ import annotations

import ast
import asyncio
import sqlite3
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
import pytest

from fabstir.cli.serve import serve as cli_serve
from fabstir.host.__main__ import command as main_command
from fabstir.host.__main__ import config_from_params
from fabstir.host.config import HostConfig, Limits
from fabstir.host.engines import ENGINES, EngineSpec, UnknownEngineError, build_engine
from fabstir.host.options import config_kwargs, config_options_table
from fabstir.host.store import (
    SCHEMA_VERSION,
    ChainIdentity,
    SessionStore,
    SessionTerms,
    StoreIdentityError,
)
from fabstir.protocol.receipts import Receipt

T = TypeVar("T")
OPS = Path(__file__).resolve().parents[2] / "ops" / "fabstir"
CHAIN_A = ChainIdentity(31337, "0x" + "aa" * 32, "0x" + "5f" * 20)
#: A fresh anvil: same chain id and (deterministic) addresses, another genesis block.
CHAIN_A_FRESH = ChainIdentity(31337, "0x" + "bb" * 32, "0x" + "5f" * 20)
TERMS = SessionTerms(1, "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20, 200, 5000, 100, 2**40)

# The schema every host database had before versioning (copied from the unversioned
# store.py), with one receipt an existing host is owed for.
V0_SCHEMA = f"""
CREATE TABLE sessions (
    session_id INTEGER PRIMARY KEY, client TEXT NOT NULL, session_key TEXT NOT NULL,
    token TEXT NOT NULL, price TEXT NOT NULL, max_tokens INTEGER NOT NULL,
    proof_interval INTEGER NOT NULL, ends_at INTEGER NOT NULL,
    receipt_tokens INTEGER NOT NULL DEFAULT 0, receipt_hash TEXT, receipt_sig TEXT,
    submitted_tokens INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'open'
          CHECK (state IN ('open', 'closing', 'settled', 'failed')),
    close_reason TEXT, closing_since REAL, last_activity REAL NOT NULL, settle_tx TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX sessions_by_state ON sessions (state);
INSERT INTO sessions (session_id, client, session_key, token, price, max_tokens,
    proof_interval, ends_at, receipt_tokens, receipt_hash, receipt_sig, state,
    closing_since, last_activity, updated_at)
VALUES (9, '0xc1', '0xc2', '0xc3', '18446744073709551615', 500, 50, 99999, 120,
    '0x{"ab" * 32}', '0x{"cd" * 65}', 'closing', 1.0, 1.0, 1.0);
INSERT INTO sessions (session_id, client, session_key, token, price, max_tokens,
    proof_interval, ends_at, state, last_activity, updated_at)
VALUES (10, '0xc1', '0xc2', '0xc3', '1', 500, 50, 99999, 'open', 1.0, 1.0);
"""
#: The receipt the V0 file holds for session 9.
V0_RECEIPT = Receipt(9, 120, "0x" + "ab" * 32, "0x" + "cd" * 65)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# ----------------------------------------------------------------- store schema


def test_unversioned_store_migrates_and_keeps_its_receipts(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(V0_SCHEMA)

    async def go() -> None:
        store = SessionStore(path, CHAIN_A)
        await store.open()
        rec = await store.get(9)
        assert rec is not None and rec.state == "closing"
        assert rec.receipt == V0_RECEIPT and rec.receipt_tokens == 120
        assert rec.price == 2**64 - 1 and rec.has_unsubmitted_receipt
        assert (await store.get(10)).receipt is None  # type: ignore[union-attr]
        assert await store.stored_identity() == CHAIN_A  # adopted on migration
        await store.close()

    run(go())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    # Opening again is a no-op migration with the same identity.
    run(_open_close(path, CHAIN_A))


def _columns(path: Path) -> set[tuple[Any, ...]]:
    """(name, type, not null, default, primary key) of each column; ALTER TABLE appends,
    so the order may differ (the store names its columns)."""
    with sqlite3.connect(path) as db:
        return {tuple(c[1:]) for c in db.execute("PRAGMA table_info(sessions)")}


def test_a_migrated_store_has_the_schema_of_a_new_one(tmp_path: Path) -> None:
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    with sqlite3.connect(old) as db:
        db.executescript(V0_SCHEMA)
    run(_open_close(old, CHAIN_A))
    run(_open_close(new, CHAIN_A))
    assert _columns(old) == _columns(new)
    names = {c[0] for c in _columns(new)}
    assert "receipt" in names and "receipt_hash" not in names and "receipt_sig" not in names


def test_a_new_store_keeps_the_receipt_it_was_given(tmp_path: Path) -> None:
    """The store takes and returns the one Receipt type, equal field for field."""
    path = tmp_path / "host.db"
    receipt = Receipt(1, 77, "0x" + "0f" * 32, "0x" + "1b" * 65)

    async def go() -> None:
        store = SessionStore(path, CHAIN_A)
        await store.open()
        await store.register(TERMS)
        assert await store.save_receipt(receipt)
        await store.close()
        again = SessionStore(path, CHAIN_A)
        await again.open()
        rec = await again.get(1)
        assert rec is not None and rec.receipt == receipt and rec.receipt_tokens == 77
        await again.close()

    run(go())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def _open_close(path: Path, identity: ChainIdentity | None) -> None:
    store = SessionStore(path, identity)
    await store.open()
    await store.close()


def test_store_from_a_newer_worker_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreIdentityError, match="newer"):
        run(_open_close(path, CHAIN_A))


# ----------------------------------------------------------------- chain identity


def test_store_refuses_another_chains_identity(tmp_path: Path) -> None:
    path = tmp_path / "host.db"

    async def first() -> None:
        store = SessionStore(path, CHAIN_A)
        await store.open()
        await store.register(TERMS)
        await store.close()

    run(first())
    for other in (
        CHAIN_A_FRESH,
        ChainIdentity(8453, CHAIN_A.genesis_hash, CHAIN_A.marketplace),
        ChainIdentity(31337, CHAIN_A.genesis_hash, "0x" + "77" * 20),
    ):
        with pytest.raises(StoreIdentityError, match="another chain"):
            run(_open_close(path, other))
    # Case of hex digits does not matter; the file's own identity (None) always opens.
    run(
        _open_close(
            path, ChainIdentity(31337, "0x" + CHAIN_A.genesis_hash[2:].upper(), "0x" + "5F" * 20)
        )
    )
    run(_open_close(path, None))


def test_a_fresh_chain_with_the_same_id_and_addresses_gets_its_own_store(
    tmp_path: Path,
) -> None:
    cfg = HostConfig(rpc_url="http://x", private_key="ab" * 32, chain_id=31337)
    old = tmp_path / CHAIN_A.file_name
    new = tmp_path / CHAIN_A_FRESH.file_name
    assert old != new

    async def go() -> None:
        store = SessionStore(old, CHAIN_A)
        await store.open()
        await store.register(TERMS)
        await store.mark_settled(1, tx="0x01", tokens=10)
        await store.close()
        fresh = SessionStore(new, CHAIN_A_FRESH)
        await fresh.open()
        assert await fresh.get(1) is None  # the old chain's settled session 1 is not here
        assert (await fresh.register(TERMS)).state == "open"
        await fresh.close()

    run(go())
    assert cfg.db_path is None  # the default: a file per identity under the fabstir home


def test_default_store_dir_is_the_fabstir_home(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = HostConfig(rpc_url="http://x", private_key="ab" * 32, chain_id=1)
    monkeypatch.setenv("FABSTIR_HOME", "/srv/fabstir")
    assert cfg.store_dir() == Path("/srv/fabstir/host")
    monkeypatch.delenv("FABSTIR_HOME")
    assert cfg.store_dir() == Path.home() / ".fabstir" / "host"


# ----------------------------------------------------------------- options


def _option_flags(cmd: click.Command) -> dict[str, object]:
    return {
        p.opts[0]: p.default
        for p in cmd.params
        if isinstance(p, click.Option) and p.expose_value and p.name != "help"
    }


def test_both_command_lines_are_generated_from_the_dataclass() -> None:
    table = config_options_table()
    flags = {o.flag: o.default for o in table}
    assert {"--engine", "--db", "--bind", "--n-ctx", "--receipt-timeout"} <= set(flags)
    assert flags["--max-tokens-per-request"] == Limits().max_tokens_per_request
    serve_flags = _option_flags(cli_serve)
    main_flags = _option_flags(main_command)
    for flag, default in flags.items():
        assert serve_flags[flag] == default, flag
        assert main_flags[flag] == default, flag
    # Nothing else is restated: the CLI adds only its --network/--account (not exposed),
    # python -m fabstir.host only how it reaches the chain and logs.
    assert set(serve_flags) == set(flags)
    assert set(main_flags) - set(flags) == {
        "--rpc-url", "--chain-id", "--deployments-dir", "--addresses", "--key-file",
        "--log-level", "--log-json",
    }  # fmt: skip


def test_options_build_the_config(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("0x" + "cd" * 32)
    key.chmod(0o600)
    ctx = main_command.make_context(
        "python -m fabstir.host",
        ["--rpc-url", "http://x", "--chain-id", "5", "--key-file", str(key), "--port", "0",
         "--receipt-timeout", "3", "--db", str(tmp_path / "h.db"), "--system-prompt", ""],
    )  # fmt: skip
    params = dict(ctx.params)
    params.pop("log_level"), params.pop("log_json")
    cfg = config_from_params(params)
    assert cfg.port == 0 and cfg.limits.receipt_timeout == 3 and cfg.chain_id == 5
    assert cfg.db_path == tmp_path / "h.db" and cfg.system_prompt is None
    assert cfg.private_key == "0x" + "cd" * 32
    defaults = config_kwargs({o.name: o.default for o in config_options_table()})
    assert HostConfig(rpc_url="http://x", private_key="ab" * 32, chain_id=1, **defaults) == (
        HostConfig(rpc_url="http://x", private_key="ab" * 32, chain_id=1)
    )


# ----------------------------------------------------------------- engines


def test_unknown_engine_is_refused_by_the_factory(tmp_path: Path) -> None:
    cfg = HostConfig(rpc_url="http://x", private_key="ab" * 32, chain_id=1, engine="tpu")
    with pytest.raises(UnknownEngineError, match="tpu"):
        run(build_engine(EngineSpec(cfg, tmp_path / "m.gguf", sha256="00", size=0)))
    assert "llama" in ENGINES


def test_llama_cpp_is_imported_in_exactly_one_module() -> None:
    importers = []
    for path in OPS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n == "llama_cpp" or n.startswith("llama_cpp.") for n in names):
                importers.append(path.relative_to(OPS).as_posix())
                break
    assert importers == ["host/engines/llama.py"]
