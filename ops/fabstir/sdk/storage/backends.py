"""Where encrypted blobs live: a small interface and two backends.

A backend stores immutable blobs by CID and a few mutable named refs (the
pointer to each user's index). It never sees plaintext. `open_store(url)`
picks one: a path or `file://` URL gives `LocalStore`, `http(s)://` gives
`IpfsHttpStore` (the IPFS HTTP RPC API of a kubo node).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Final, Protocol

from fabstir.sdk.constants import (
    DEFAULT_STORAGE_DIR,
    STORAGE_DOWNLOAD_TIMEOUT,
    STORAGE_UPLOAD_TIMEOUT,
)
from fabstir.sdk.errors import SDKError, SDKErrorCode
from fabstir.sdk.storage.cid import canonical_cid, compute_cid

_REF_NAME_RE: Final = re.compile(r"[a-z0-9_-]{1,64}")
#: Largest blob IpfsHttpStore accepts: one chunk, so the node's CID is the
#: raw-block CID we verify. kubo's chunker allows at most 1 MiB.
MAX_IPFS_BLOB: Final = 1 << 20


class BlobStore(Protocol):
    """What StorageManager needs from a backend."""

    @property
    def url(self) -> str:
        """Where this store is (for messages and config)."""
        ...

    async def put(self, data: bytes) -> str:
        """Store `data`; return its CID (CIDv1 raw sha2-256)."""
        ...

    async def get(self, cid: str) -> bytes:
        """The bytes stored under `cid`; SDKError(STORAGE_NOT_FOUND) if none.
        Callers verify the bytes against the CID."""
        ...

    async def set_ref(self, name: str, cid: str) -> None:
        """Point the mutable name `name` at `cid`."""
        ...

    async def get_ref(self, name: str) -> str | None:
        """Where `name` points, or None if it was never set."""
        ...


def _check_ref_name(name: str) -> str:
    if not isinstance(name, str) or not _REF_NAME_RE.fullmatch(name):
        raise SDKError(SDKErrorCode.INVALID_ARGUMENT, f"bad ref name {name!r}")
    return name


# --- local directory -------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    # Write-to-temp, fsync, rename, fsync the directory: a crash leaves either
    # the old file or the new one, never a torn one.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class LocalStore:
    """Blobs as files named by CID under `<root>/blobs`, refs under `<root>/refs`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self._blobs = self.root / "blobs"
        self._refs = self.root / "refs"

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def _ensure_dirs(self) -> None:
        try:
            self._blobs.mkdir(parents=True, exist_ok=True)
            self._refs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SDKError(
                SDKErrorCode.STORAGE_ERROR, f"cannot create storage directory {self.root}: {exc}"
            ) from exc

    def _put_sync(self, data: bytes) -> str:
        cid = compute_cid(data)
        path = self._blobs / cid
        if not path.exists():  # content-addressed: same name, same bytes
            self._ensure_dirs()
            try:
                _atomic_write(path, data)
            except OSError as exc:
                raise SDKError(SDKErrorCode.STORAGE_ERROR, f"cannot write {path}: {exc}") from exc
        return cid

    def _get_sync(self, cid: str) -> bytes:
        path = self._blobs / canonical_cid(cid)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise SDKError(
                SDKErrorCode.STORAGE_NOT_FOUND, f"no blob {cid} in {self.root}", {"cid": cid}
            ) from None
        except OSError as exc:
            raise SDKError(SDKErrorCode.STORAGE_ERROR, f"cannot read {path}: {exc}") from exc

    def _set_ref_sync(self, name: str, cid: str) -> None:
        self._ensure_dirs()
        path = self._refs / _check_ref_name(name)
        try:
            _atomic_write(path, canonical_cid(cid).encode())
        except OSError as exc:
            raise SDKError(SDKErrorCode.STORAGE_ERROR, f"cannot write {path}: {exc}") from exc

    def _get_ref_sync(self, name: str) -> str | None:
        path = self._refs / _check_ref_name(name)
        try:
            return path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise SDKError(SDKErrorCode.STORAGE_ERROR, f"cannot read {path}: {exc}") from exc

    async def put(self, data: bytes) -> str:
        return await asyncio.to_thread(self._put_sync, data)

    async def get(self, cid: str) -> bytes:
        return await asyncio.to_thread(self._get_sync, cid)

    async def set_ref(self, name: str, cid: str) -> None:
        await asyncio.to_thread(self._set_ref_sync, name, cid)

    async def get_ref(self, name: str) -> str | None:
        return await asyncio.to_thread(self._get_ref_sync, name)


# --- IPFS HTTP RPC API (kubo) ----------------------------------------------------------


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "fabstir-" + secrets.token_hex(16)
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="blob"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


class IpfsHttpStore:
    """Blobs on an IPFS node through its HTTP RPC API (`/api/v0/...`).

    Blobs go in with `add` (CIDv1, raw leaves, one chunk up to 1 MiB, pinned)
    and come back with `cat`; refs are small files in the node's MFS under
    `/fabstir/refs/`, so another machine using the same node finds the
    index. The CID the node reports must equal the locally computed one.
    """

    def __init__(
        self,
        url: str,
        *,
        upload_timeout: float = STORAGE_UPLOAD_TIMEOUT,
        download_timeout: float = STORAGE_DOWNLOAD_TIMEOUT,
        ref_dir: str = "/fabstir/refs",
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise SDKError(SDKErrorCode.INVALID_ARGUMENT, f"not an http(s) URL: {url!r}")
        self._base = url.rstrip("/")
        self._upload_timeout = upload_timeout
        self._download_timeout = download_timeout
        self._ref_dir = ref_dir.rstrip("/")

    @property
    def url(self) -> str:
        return self._base

    def _call(
        self,
        command: str,
        params: list[tuple[str, str]],
        timeout: float,
        body: bytes | None = None,
    ) -> bytes:
        query = urllib.parse.urlencode(params)
        headers: dict[str, str] = {}
        data = b""
        if body is not None:
            data, headers["Content-Type"] = _multipart(body)
        # The RPC API only takes POST (kubo refuses GET to stop CSRF).
        request = urllib.request.Request(
            f"{self._base}/api/v0/{command}?{query}", data=data, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload: bytes = response.read()
                return payload
        except urllib.error.HTTPError as exc:
            detail = exc.read(4096).decode("utf-8", "replace")
            # kubo answers errors as {"Message": ..., "Code": ..., "Type": "error"}.
            with contextlib.suppress(ValueError, AttributeError):
                detail = str(json.loads(detail).get("Message", detail))
            raise SDKError(
                SDKErrorCode.STORAGE_ERROR,
                f"IPFS {command} failed ({exc.code}): {detail}",
                {"status": exc.code, "detail": detail},
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise SDKError(
                SDKErrorCode.S5_CONNECTION_FAILED,
                f"cannot reach the IPFS API at {self._base}: {exc}",
            ) from None

    def _put_sync(self, data: bytes) -> str:
        if len(data) > MAX_IPFS_BLOB:
            raise SDKError(
                SDKErrorCode.STORAGE_ERROR,
                f"blob is {len(data)} bytes; IpfsHttpStore stores at most {MAX_IPFS_BLOB} "
                "(one raw block); use a local store for larger conversations",
            )
        expected = compute_cid(data)
        params = [
            ("cid-version", "1"),
            ("raw-leaves", "true"),
            ("hash", "sha2-256"),
            ("chunker", f"size-{MAX_IPFS_BLOB}"),
            ("pin", "true"),
        ]
        raw = self._call("add", params, self._upload_timeout, body=data)
        lines = [line for line in raw.decode("utf-8", "replace").splitlines() if line.strip()]
        try:
            reported = str(json.loads(lines[-1])["Hash"])
        except (IndexError, ValueError, KeyError, TypeError):
            raise SDKError(
                SDKErrorCode.STORAGE_ERROR, f"IPFS add gave an unexpected answer: {raw[:200]!r}"
            ) from None
        if reported != expected:
            raise SDKError(
                SDKErrorCode.STORAGE_ERROR,
                f"IPFS node stored the blob as {reported}, expected {expected}",
            )
        return expected

    def _get_sync(self, cid: str) -> bytes:
        try:
            return self._call("cat", [("arg", canonical_cid(cid))], self._download_timeout)
        except SDKError as exc:
            if exc.code is SDKErrorCode.STORAGE_ERROR and "not found" in exc.message.lower():
                raise SDKError(
                    SDKErrorCode.STORAGE_NOT_FOUND, f"no blob {cid} on {self._base}", {"cid": cid}
                ) from None
            raise

    def _ref_path(self, name: str) -> str:
        return f"{self._ref_dir}/{_check_ref_name(name)}"

    def _set_ref_sync(self, name: str, cid: str) -> None:
        params = [
            ("arg", self._ref_path(name)),
            ("create", "true"),
            ("truncate", "true"),
            ("parents", "true"),
        ]
        self._call("files/write", params, self._upload_timeout, body=canonical_cid(cid).encode())

    def _get_ref_sync(self, name: str) -> str | None:
        try:
            raw = self._call("files/read", [("arg", self._ref_path(name))], self._download_timeout)
        except SDKError as exc:
            if exc.code is SDKErrorCode.STORAGE_ERROR and "does not exist" in exc.message:
                return None
            raise
        return raw.decode("ascii", "replace").strip()

    async def put(self, data: bytes) -> str:
        return await asyncio.to_thread(self._put_sync, data)

    async def get(self, cid: str) -> bytes:
        return await asyncio.to_thread(self._get_sync, cid)

    async def set_ref(self, name: str, cid: str) -> None:
        await asyncio.to_thread(self._set_ref_sync, name, cid)

    async def get_ref(self, name: str) -> str | None:
        return await asyncio.to_thread(self._get_ref_sync, name)


def open_store(url: str | Path | None = None) -> BlobStore:
    """The backend for a storage URL.

    None -> LocalStore(DEFAULT_STORAGE_DIR); a path or `file:///path` ->
    LocalStore; `http(s)://host:port` -> IpfsHttpStore. Anything else (an S5
    portal, for now) raises SDKError(STORAGE_ERROR) naming what is supported.
    """
    if url is None:
        return LocalStore(DEFAULT_STORAGE_DIR)
    if isinstance(url, Path):
        return LocalStore(url)
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise SDKError(SDKErrorCode.STORAGE_ERROR, f"file URL must be local: {url!r}")
        return LocalStore(urllib.parse.unquote(parsed.path))
    if parsed.scheme in ("http", "https"):
        return IpfsHttpStore(url)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return LocalStore(url)
    raise SDKError(
        SDKErrorCode.STORAGE_ERROR,
        f"unsupported storage URL {url!r}: use a directory path, file:///path, "
        "or http(s)://host:5001 (IPFS HTTP API)",
    )
