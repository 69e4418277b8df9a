"""StorageManager: encryption per wallet, real CIDs, tamper detection, backends.

IpfsHttpStore is tested against `FakeIpfsApi` below: a STAND-IN for a kubo
node that implements only the four RPC endpoints the store uses (add, cat,
files/write, files/read) and computes real CIDv1 raw/sha2-256 CIDs with
`multiformats`, independently of the SDK's code. No real IPFS node runs
here: the PyPI package kubo-python (0.1.5) does not import as published
(it needs `ipfs_tk_generics`, which is not on PyPI, and looks for its
libkubo .so in the wrong folder); patched by hand, its in-process node runs
offline but serves no HTTP RPC API, so there is nothing to point
IpfsHttpStore at.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import urllib.parse
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from multiformats import CID, multihash

from fabstir.protocol.receipts import SECP256K1_N
from fabstir.sdk.errors import SDKError, SDKErrorCode
from fabstir.sdk.storage import (
    MAX_IPFS_BLOB,
    STORAGE_KEY_MESSAGE,
    BlobKind,
    ChatMessage,
    IpfsHttpStore,
    LocalStore,
    StorageKey,
    StorageManager,
    compute_cid,
    is_cid,
    open_store,
    verify_cid,
)

T = TypeVar("T")
KEY_A = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
KEY_B = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
ADDR_A = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse.", "timestamp": 1_700_000_000_000},
    {"role": "user", "content": "Capital of France? Grüße 🌍", "timestamp": 1_700_000_000_500},
    {"role": "assistant", "content": "Paris.", "timestamp": 1_700_000_001_000, "tokens": 3},
]
METADATA: dict[str, Any] = {
    "model": "0x0b75a2061e70e736924a30c0a327db7ab719402129f76f631adbd7b7a5a5bced",
    "provider": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "startTime": 1_700_000_000,
    "config": {
        "depositAmount": "1.0",
        "pricePerToken": 200,
        "duration": 3600,
        "proofInterval": 100,
    },
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _code(coro: Coroutine[Any, Any, Any]) -> SDKErrorCode:
    with pytest.raises(SDKError) as info:
        run(coro)
    return info.value.code


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


def _blob_path(root: Path, cid: str) -> Path:
    return root / "blobs" / cid


# --- CIDs ------------------------------------------------------------------------------


def test_cid_matches_kubo_for_a_known_file() -> None:
    # `echo -n "hello world" | ipfs add --cid-version=1 --raw-leaves`
    assert compute_cid(b"hello world") == (
        "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    )
    verify_cid(compute_cid(b"x"), b"x")
    with pytest.raises(SDKError) as info:
        verify_cid(compute_cid(b"x"), b"y")
    assert info.value.code is SDKErrorCode.STORAGE_ERROR
    assert not is_cid("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG")  # v0/dag-pb: unverifiable
    assert not is_cid("../../etc/passwd")
    assert is_cid(compute_cid(b"x").upper())  # base32upper decodes too


# --- local store round trips ------------------------------------------------------------


def test_round_trip_by_cid_and_session_id(store_dir: Path) -> None:
    manager = StorageManager.from_private_key(KEY_A, store_dir)
    assert manager.owner == ADDR_A
    cid = run(manager.store_conversation(42, MESSAGES))
    assert is_cid(cid) and cid.startswith("bafkrei")
    meta_cid = run(manager.store_session_metadata("42", METADATA))
    by_cid = run(manager.retrieve_conversation(cid))
    by_sid = run(manager.retrieve_conversation(42))
    assert by_cid == by_sid
    assert by_cid.session_id == "42" and by_cid.cid == cid
    assert [m.to_dict() for m in by_cid.messages] == MESSAGES
    assert by_cid.metadata == METADATA
    assert run(manager.retrieve_session_metadata(meta_cid)) == METADATA
    assert run(manager.retrieve_session_metadata(42)) == METADATA
    # The backend never sees plaintext.
    raw = _blob_path(store_dir, cid).read_bytes()
    assert b"Paris" not in raw and "Grüße".encode() not in raw
    assert raw[:5] == b"FBST\x01" and raw[5] == BlobKind.CONVERSATION


def test_survives_a_new_manager_and_lists_sessions(store_dir: Path) -> None:
    first = StorageManager.from_private_key(KEY_A, f"file://{store_dir}")
    run(first.store_conversation("s-1", MESSAGES[:1]))
    cid2 = run(first.store_conversation("s-2", MESSAGES))
    run(first.store_session_metadata("s-2", METADATA))
    newest = run(first.store_conversation("s-1", MESSAGES[:2]))

    second = StorageManager.from_private_key(KEY_A, str(store_dir))  # "another process"
    assert len(run(second.retrieve_conversation("s-1")).messages) == 2
    assert run(second.retrieve_conversation("s-2")).cid == cid2
    sessions = run(second.list_sessions())
    assert set(sessions) == {"s-1", "s-2"}
    assert sessions["s-1"].conversation_cid == newest and sessions["s-1"].metadata_cid is None
    assert sessions["s-2"].metadata_cid is not None
    assert not list(store_dir.rglob(".tmp-*"))  # atomic writes leave no debris


def test_cid_changes_with_content(store_dir: Path) -> None:
    manager = StorageManager.from_private_key(KEY_A, store_dir)
    a = run(manager.store_conversation(1, MESSAGES[:1]))
    b = run(manager.store_conversation(1, MESSAGES[:2]))
    assert a != b
    # Older versions stay readable by CID; the session id gives the newest.
    assert len(run(manager.retrieve_conversation(a)).messages) == 1
    assert run(manager.retrieve_conversation(1)).cid == b


# --- wallets ---------------------------------------------------------------------------------


def test_wrong_wallet_cannot_read(store_dir: Path) -> None:
    owner = StorageManager.from_private_key(KEY_A, store_dir)
    cid = run(owner.store_conversation(7, MESSAGES))
    meta = run(owner.store_session_metadata(7, METADATA))
    thief = StorageManager.from_private_key(KEY_B, store_dir)
    assert _code(thief.retrieve_conversation(cid)) is SDKErrorCode.STORAGE_ERROR
    assert _code(thief.retrieve_session_metadata(meta)) is SDKErrorCode.STORAGE_ERROR
    # Its own index is separate: the session is simply not there.
    assert _code(thief.retrieve_conversation(7)) is SDKErrorCode.STORAGE_NOT_FOUND
    assert run(thief.list_sessions()) == {}


def test_key_is_deterministic_and_derivable_from_a_wallet_signature() -> None:
    from_key = StorageKey.from_private_key(KEY_A)
    assert StorageKey.from_private_key(KEY_A).index_name == from_key.index_name
    signed = Account.sign_message(encode_defunct(text=STORAGE_KEY_MESSAGE), KEY_A).signature
    from_sig = StorageKey(ADDR_A.lower(), "0x" + signed.hex())
    blob = from_key.encrypt(BlobKind.CONVERSATION, b"secret")
    assert from_sig.decrypt(BlobKind.CONVERSATION, blob) == b"secret"
    # v as 0/1 and the high-s twin are the same signature: same key.
    r, s, v = signed[:32], int.from_bytes(signed[32:64], "big"), signed[64]
    for variant in (
        r + signed[32:64] + bytes([v - 27]),
        r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v]),
    ):
        assert StorageKey(ADDR_A, variant).decrypt(BlobKind.CONVERSATION, blob) == b"secret"
    assert "secret" not in repr(from_key) and ADDR_A in repr(from_key)
    with pytest.raises(SDKError) as info:
        StorageKey("0x70997970C51812dc3A010C7d01b50e0d17dc79C8", signed)
    assert info.value.code is SDKErrorCode.AUTH_FAILED
    with pytest.raises(SDKError) as info:
        StorageKey(ADDR_A, b"\x00" * 10)
    assert info.value.code is SDKErrorCode.AUTH_FAILED
    with pytest.raises(SDKError) as info:
        StorageKey(ADDR_A, "0xnothex")
    assert info.value.code is SDKErrorCode.AUTH_FAILED


# --- tampering -------------------------------------------------------------------------------


def test_blob_that_does_not_match_its_cid_is_rejected(store_dir: Path) -> None:
    manager = StorageManager.from_private_key(KEY_A, store_dir)
    cid = run(manager.store_conversation(1, MESSAGES))
    path = _blob_path(store_dir, cid)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(SDKError) as info:
        run(manager.retrieve_conversation(cid))
    assert info.value.code is SDKErrorCode.STORAGE_ERROR
    assert "does not match its CID" in info.value.message


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (-1, "altered"),  # ciphertext/tag
        (10, "altered"),  # nonce
        (4, "version"),  # format version
        (5, "not conversation"),  # kind relabelled
        (0, "not a Fabstir"),  # magic
    ],
)
def test_tampered_blob_under_its_own_cid_is_rejected(
    store_dir: Path, offset: int, message: str
) -> None:
    # An attacker with write access re-files altered bytes under their new
    # CID and repoints the index: the CID check passes, authentication must not.
    manager = StorageManager.from_private_key(KEY_A, store_dir)
    cid = run(manager.store_conversation(1, MESSAGES))
    data = bytearray(_blob_path(store_dir, cid).read_bytes())
    data[offset] ^= 0x02 if offset in (4, 5) else 0x01
    forged = run(manager.store.put(bytes(data)))
    with pytest.raises(SDKError) as info:
        run(manager.retrieve_conversation(forged))
    assert info.value.code is SDKErrorCode.STORAGE_ERROR
    assert message in info.value.message


def test_kind_confusion_and_unreadable_index(store_dir: Path) -> None:
    manager = StorageManager.from_private_key(KEY_A, store_dir)
    meta = run(manager.store_session_metadata(1, METADATA))
    assert _code(manager.retrieve_conversation(meta)) is SDKErrorCode.STORAGE_ERROR
    # A ref pointing at garbage is an error, never silently "no sessions"
    # (which would make the next write drop the whole index).
    junk = run(manager.store.put(b"junk" * 10))
    run(manager.store.set_ref(manager.key.index_name, junk))
    assert _code(manager.list_sessions()) is SDKErrorCode.STORAGE_ERROR
    assert _code(manager.store_conversation(2, MESSAGES)) is SDKErrorCode.STORAGE_ERROR


# --- input validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "robot", "content": "x", "timestamp": 1}],
        [{"role": "user", "content": 5, "timestamp": 1}],
        [{"role": "user", "content": "x", "timestamp": "now"}],
        [{"role": "user", "content": "x", "timestamp": float("nan")}],
        [{"role": "user", "content": "x", "timestamp": True}],
        [{"role": "user", "content": "x", "timestamp": 1, "tokens": -1}],
        [{"role": "user", "content": "x", "timestamp": 1, "mood": "happy"}],
        ["just text"],
    ],
)
def test_bad_messages(store_dir: Path, messages: list[Any]) -> None:
    manager = StorageManager.from_private_key(KEY_A, store_dir)
    assert _code(manager.store_conversation(1, messages)) is SDKErrorCode.INVALID_ARGUMENT


def test_bad_ids_and_metadata(store_dir: Path) -> None:
    manager = StorageManager.from_private_key(KEY_A, store_dir)
    for sid in (-1, "", "x" * 200, "a\nb", 1.5, None):
        assert _code(manager.store_conversation(sid, [])) is SDKErrorCode.INVALID_ARGUMENT  # type: ignore[arg-type]
    assert (
        _code(manager.store_session_metadata(1, {"x": object()})) is SDKErrorCode.INVALID_ARGUMENT
    )
    assert (
        _code(manager.store_session_metadata(1, {"x": float("inf")}))
        is SDKErrorCode.INVALID_ARGUMENT
    )
    assert _code(manager.retrieve_conversation(99)) is SDKErrorCode.STORAGE_NOT_FOUND
    assert _code(manager.retrieve_conversation(compute_cid(b"?"))) is (
        SDKErrorCode.STORAGE_NOT_FOUND
    )
    ok = run(manager.store_conversation(1, [ChatMessage("user", "hi", 1.5)]))
    assert run(manager.retrieve_conversation(ok)).messages[0].timestamp == 1.5


# --- backend selection --------------------------------------------------------------------------


def test_open_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert isinstance(open_store(tmp_path), LocalStore)
    local = open_store(f"file://{tmp_path}")
    assert isinstance(local, LocalStore) and local.root == tmp_path.resolve()
    assert isinstance(open_store(None), LocalStore)
    ipfs = open_store("http://127.0.0.1:5001/")
    assert isinstance(ipfs, IpfsHttpStore) and ipfs.url == "http://127.0.0.1:5001"
    for bad in ("wss://s5.ninja/s5/p2p", "s5://x", "ftp://x", "file://remote/path"):
        with pytest.raises(SDKError) as info:
            open_store(bad)
        assert info.value.code is SDKErrorCode.STORAGE_ERROR


# --- IpfsHttpStore against a stand-in for kubo's RPC API ------------------------------------------


class FakeIpfsApi(http.server.ThreadingHTTPServer):
    """STAND-IN for a kubo node: add/cat/files-write/files-read, real raw CIDs."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeIpfsHandler)
        self.blocks: dict[str, bytes] = {}
        self.mfs: dict[str, bytes] = {}
        self.tamper_cat = False
        self.wrong_cid = False
        self.calls: list[tuple[str, dict[str, list[str]]]] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


def _multipart_file(body: bytes, content_type: str) -> bytes:
    boundary = content_type.split("boundary=", 1)[1].encode()
    part = body.split(b"--" + boundary)[1]
    content = part.split(b"\r\n\r\n", 1)[1]
    assert content.endswith(b"\r\n")
    return content[:-2]


class _FakeIpfsHandler(http.server.BaseHTTPRequestHandler):
    server: FakeIpfsApi

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, message: str) -> None:
        self._reply(500, json.dumps({"Message": message, "Code": 0, "Type": "error"}).encode())

    def do_GET(self) -> None:
        self._reply(405, b"405 - Method Not Allowed", "text/plain")

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(url.query)
        self.server.calls.append((url.path, params))
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if url.path == "/api/v0/add":
            data = _multipart_file(body, self.headers["Content-Type"])
            # What kubo does for one chunk with --cid-version=1 --raw-leaves.
            assert params["cid-version"] == ["1"] and params["raw-leaves"] == ["true"]
            chunk = int(params["chunker"][0].removeprefix("size-"))
            assert len(data) <= chunk <= 1 << 20
            cid = str(CID("base32", 1, "raw", multihash.digest(data, "sha2-256")))
            self.server.blocks[cid] = data
            reported = compute_cid(b"other") if self.server.wrong_cid else cid
            line = {"Name": "blob", "Hash": reported, "Size": str(len(data))}
            self._reply(200, (json.dumps(line) + "\n").encode())
        elif url.path == "/api/v0/cat":
            cid = params["arg"][0]
            if cid not in self.server.blocks:
                self._error(f"block was not found locally (offline): ipld: could not find {cid}")
                return
            data = self.server.blocks[cid]
            if self.server.tamper_cat:
                data = data[:-1] + bytes([data[-1] ^ 1])
            self._reply(200, data, "text/plain")
        elif url.path == "/api/v0/files/write":
            assert params["create"] == ["true"] and params["truncate"] == ["true"]
            self.server.mfs[params["arg"][0]] = _multipart_file(body, self.headers["Content-Type"])
            self._reply(200, b"")
        elif url.path == "/api/v0/files/read":
            path = params["arg"][0]
            if path not in self.server.mfs:
                self._error("file does not exist")
                return
            self._reply(200, self.server.mfs[path], "text/plain")
        else:
            self._reply(404, b"404 page not found", "text/plain")


@pytest.fixture
def fake_ipfs() -> Iterator[FakeIpfsApi]:
    server = FakeIpfsApi()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_ipfs_store_round_trip_and_shared_index(fake_ipfs: FakeIpfsApi) -> None:
    manager = StorageManager.from_private_key(KEY_A, fake_ipfs.url)
    assert isinstance(manager.store, IpfsHttpStore)
    cid = run(manager.store_conversation(5, MESSAGES))
    run(manager.store_session_metadata(5, METADATA))
    assert cid in fake_ipfs.blocks
    assert any(path.startswith("/fabstir/refs/") for path in fake_ipfs.mfs)
    # "Another machine" with the same wallet and node finds it by session id.
    other = StorageManager.from_private_key(KEY_A, fake_ipfs.url)
    conversation = run(other.retrieve_conversation(5))
    assert conversation.cid == cid and conversation.metadata == METADATA
    assert [m.to_dict() for m in conversation.messages] == MESSAGES
    assert _code(other.retrieve_conversation(compute_cid(b"none"))) is (
        SDKErrorCode.STORAGE_NOT_FOUND
    )


def test_ipfs_store_detects_a_lying_node(fake_ipfs: FakeIpfsApi) -> None:
    manager = StorageManager.from_private_key(KEY_A, fake_ipfs.url)
    cid = run(manager.store_conversation(5, MESSAGES))
    fake_ipfs.tamper_cat = True
    with pytest.raises(SDKError) as info:
        run(manager.retrieve_conversation(cid))
    assert info.value.code is SDKErrorCode.STORAGE_ERROR
    assert "does not match its CID" in info.value.message
    fake_ipfs.tamper_cat = False
    fake_ipfs.wrong_cid = True
    with pytest.raises(SDKError) as info:
        run(manager.store_conversation(6, MESSAGES))
    assert info.value.code is SDKErrorCode.STORAGE_ERROR and "expected" in info.value.message


def test_ipfs_store_limits_and_unreachable_node(fake_ipfs: FakeIpfsApi) -> None:
    store = IpfsHttpStore(fake_ipfs.url)
    with pytest.raises(SDKError) as info:
        run(store.put(b"\x00" * (MAX_IPFS_BLOB + 1)))
    assert info.value.code is SDKErrorCode.STORAGE_ERROR
    assert run(store.put(b"\x00" * MAX_IPFS_BLOB)) == compute_cid(b"\x00" * MAX_IPFS_BLOB)
    assert run(store.get_ref("nothing")) is None
    with pytest.raises(SDKError):
        run(store.get_ref("../escape"))
    host, port = fake_ipfs.server_address[:2]
    fake_ipfs.shutdown()
    fake_ipfs.server_close()
    dead = IpfsHttpStore(f"http://{host!s}:{port}", upload_timeout=2, download_timeout=2)
    assert _code(dead.put(b"x")) is SDKErrorCode.S5_CONNECTION_FAILED
    assert _code(dead.get(compute_cid(b"x"))) is SDKErrorCode.S5_CONNECTION_FAILED
    with pytest.raises(SDKError):
        IpfsHttpStore("ftp://x")
