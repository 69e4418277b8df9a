"""StorageManager: the reference's storage API over encrypted, content-addressed blobs.

Each stored conversation or metadata record is one encrypted blob named by
its CID. A per-user index (itself an encrypted blob, found through a ref
whose name only the wallet can derive) maps session ids to their newest
CIDs, so `retrieve_conversation(session_id)` works from any machine with the
same wallet and the same backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast

from fabstir.protocol.receipts import PrivateKeyLike
from fabstir.sdk.errors import SDKError, SDKErrorCode
from fabstir.sdk.storage.backends import BlobStore, open_store
from fabstir.sdk.storage.cid import canonical_cid, is_cid, verify_cid
from fabstir.sdk.storage.crypto import BlobKind, StorageKey

Role = Literal["user", "assistant", "system"]
ROLES: Final = frozenset({"user", "assistant", "system"})
_RECORD_VERSION: Final = 1
_MAX_SESSION_ID_LENGTH: Final = 128


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation (the reference's ChatMessage)."""

    role: Role
    content: str
    timestamp: float
    tokens: int | None = None

    @classmethod
    def from_value(cls, value: ChatMessage | Mapping[str, Any]) -> ChatMessage:
        """Validate a ChatMessage or a `{role, content, timestamp, tokens?}` mapping."""
        if isinstance(value, ChatMessage):
            return value
        if not isinstance(value, Mapping):
            raise _bad(f"a message must be a mapping or ChatMessage, got {type(value).__name__}")
        extra = set(value) - {"role", "content", "timestamp", "tokens"}
        if extra:
            raise _bad(f"unknown message field(s) {sorted(extra)}")
        role, content = value.get("role"), value.get("content")
        timestamp, tokens = value.get("timestamp"), value.get("tokens")
        if role not in ROLES:
            raise _bad(f"message role must be one of {sorted(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise _bad("message content must be a string")
        if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
            raise _bad(f"message timestamp must be a number, got {timestamp!r}")
        if not 0 <= timestamp < float("inf"):
            raise _bad(f"message timestamp must be finite and >= 0, got {timestamp!r}")
        if tokens is not None and (type(tokens) is not int or tokens < 0):
            raise _bad(f"message tokens must be a non-negative int, got {tokens!r}")
        return cls(cast(Role, role), content, timestamp, tokens)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; `tokens` left out when unknown."""
        out: dict[str, Any] = {
            "role": self.role,
            "content": self.content,
            "timestamp": self.timestamp,
        }
        if self.tokens is not None:
            out["tokens"] = self.tokens
        return out


@dataclass(frozen=True)
class Conversation:
    """A retrieved conversation, with its session's metadata when stored."""

    session_id: str
    messages: tuple[ChatMessage, ...]
    cid: str
    stored_at: float
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class IndexEntry:
    """Where a session's newest conversation and metadata blobs are."""

    session_id: str
    conversation_cid: str | None
    metadata_cid: str | None
    updated_at: float


def _bad(message: str) -> SDKError:
    return SDKError(SDKErrorCode.INVALID_ARGUMENT, message)


def _session_key(session_id: str | int) -> str:
    if type(session_id) is int and session_id >= 0:
        return str(session_id)
    if (
        isinstance(session_id, str)
        and 0 < len(session_id) <= _MAX_SESSION_ID_LENGTH
        and session_id.isprintable()
    ):
        return session_id
    raise _bad(
        f"session id must be a non-negative int or 1-{_MAX_SESSION_ID_LENGTH} printable "
        f"characters, got {session_id!r}"
    )


def _json_default(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode(record: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(
            record, default=_json_default, allow_nan=False, ensure_ascii=False,
            separators=(",", ":"), sort_keys=True,
        ).encode("utf-8")  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise _bad(f"cannot store this value as JSON: {exc}") from None


def _decode(plaintext: bytes, kind: str) -> dict[str, Any]:
    try:
        record = json.loads(plaintext)
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("kind") != kind:
        raise SDKError(SDKErrorCode.STORAGE_ERROR, f"stored {kind} record is unreadable")
    if record.get("v") != _RECORD_VERSION:
        raise SDKError(
            SDKErrorCode.STORAGE_ERROR,
            f"stored {kind} record version {record.get('v')!r} is not supported; upgrade the SDK",
        )
    return record


class StorageManager:
    """Encrypted, content-addressed storage of conversations and session metadata.

    Everything is encrypted with a key only the user's wallet can derive
    (see `StorageKey`) before it reaches the backend, and addressed by the
    CID of the encrypted bytes, which is checked on every read.
    """

    def __init__(self, store: BlobStore, key: StorageKey) -> None:
        self.store = store
        self.key = key
        # Serialises read-modify-write of the index within this process.
        self._index_lock = asyncio.Lock()

    @classmethod
    def from_private_key(
        cls, private_key: PrivateKeyLike, url: str | Path | None = None
    ) -> StorageManager:
        """Storage for the wallet of `private_key` on the backend at `url`
        (None: the default local directory)."""
        return cls(open_store(url), StorageKey.from_private_key(private_key))

    @property
    def owner(self) -> str:
        """The wallet address whose data this manager reads and writes."""
        return self.key.owner

    # --- blobs -----------------------------------------------------------------------

    async def _put(self, kind: BlobKind, record: Mapping[str, Any]) -> str:
        return await self.store.put(self.key.encrypt(kind, _encode(record)))

    async def _get(self, kind: BlobKind, cid: str, label: str) -> dict[str, Any]:
        cid = canonical_cid(cid)
        blob = await self.store.get(cid)
        verify_cid(cid, blob)
        return _decode(self.key.decrypt(kind, blob), label)

    # --- index -----------------------------------------------------------------------

    async def _read_index(self) -> dict[str, dict[str, Any]]:
        pointer = await self.store.get_ref(self.key.index_name)
        if pointer is None:
            return {}
        # An unreadable index is an error, never "empty": overwriting it
        # would silently drop every session it lists.
        record = await self._get(BlobKind.INDEX, pointer, "index")
        sessions = record.get("sessions")
        if not isinstance(sessions, dict):
            raise SDKError(SDKErrorCode.STORAGE_ERROR, "stored index is unreadable")
        return sessions

    async def _update_index(self, session_id: str, field: str, cid: str) -> None:
        async with self._index_lock:
            sessions = await self._read_index()
            entry = dict(sessions.get(session_id) or {})
            entry[field] = cid
            entry["updated_at"] = time.time()
            sessions[session_id] = entry
            index_cid = await self._put(
                BlobKind.INDEX, {"v": _RECORD_VERSION, "kind": "index", "sessions": sessions}
            )
            await self.store.set_ref(self.key.index_name, index_cid)

    async def list_sessions(self) -> dict[str, IndexEntry]:
        """Every session this wallet stored something for, with the newest CIDs."""
        sessions = await self._read_index()
        return {
            sid: IndexEntry(
                session_id=sid,
                conversation_cid=entry.get("conversation"),
                metadata_cid=entry.get("metadata"),
                updated_at=float(entry.get("updated_at", 0.0)),
            )
            for sid, entry in sessions.items()
        }

    async def _resolve(self, ref: str | int, field: str) -> tuple[str, str | None]:
        """(cid, session id if known) for a CID or a session id."""
        if isinstance(ref, str) and is_cid(ref):
            return canonical_cid(ref), None
        session_id = _session_key(ref)
        entry = (await self._read_index()).get(session_id) or {}
        cid = entry.get(field)
        if not isinstance(cid, str):
            raise SDKError(
                SDKErrorCode.STORAGE_NOT_FOUND,
                f"no {field} stored for session {session_id} by {self.owner}",
                {"session_id": session_id},
            )
        return cid, session_id

    # --- the reference's API -------------------------------------------------------

    async def store_conversation(
        self, session_id: str | int, messages: Iterable[ChatMessage | Mapping[str, Any]]
    ) -> str:
        """Encrypt and store a session's conversation; returns its CID.

        Storing again for the same session stores a new blob and moves the
        session's index entry to it (older CIDs stay readable).
        """
        sid = _session_key(session_id)
        checked = [ChatMessage.from_value(m) for m in messages]
        cid = await self._put(
            BlobKind.CONVERSATION,
            {
                "v": _RECORD_VERSION,
                "kind": "conversation",
                "session_id": sid,
                "stored_at": time.time(),
                "messages": [m.to_dict() for m in checked],
            },
        )
        await self._update_index(sid, "conversation", cid)
        return cid

    async def retrieve_conversation(self, ref: str | int) -> Conversation:
        """A conversation by CID, or the newest one stored for a session id.

        Raises SDKError: STORAGE_NOT_FOUND if nothing is stored,
        STORAGE_ERROR if the blob is another wallet's, altered, or does not
        match its CID.
        """
        cid, _ = await self._resolve(ref, "conversation")
        record = await self._get(BlobKind.CONVERSATION, cid, "conversation")
        try:
            session_id = str(record["session_id"])
            messages = tuple(ChatMessage.from_value(m) for m in record["messages"])
            stored_at = float(record["stored_at"])
        except (KeyError, TypeError, ValueError, SDKError):
            raise SDKError(
                SDKErrorCode.STORAGE_ERROR, f"stored conversation {cid} is unreadable"
            ) from None
        metadata: dict[str, Any] | None = None
        entry = (await self._read_index()).get(session_id) or {}
        if isinstance(entry.get("metadata"), str):
            metadata = await self._metadata_at(entry["metadata"])
        return Conversation(session_id, messages, cid, stored_at, metadata)

    async def store_session_metadata(
        self, session_id: str | int, metadata: Mapping[str, Any]
    ) -> str:
        """Encrypt and store a session's metadata (model, provider, startTime,
        config, ...: any JSON object); returns its CID."""
        if not isinstance(metadata, Mapping):
            raise _bad("metadata must be a mapping (a JSON object)")
        sid = _session_key(session_id)
        cid = await self._put(
            BlobKind.SESSION_METADATA,
            {
                "v": _RECORD_VERSION,
                "kind": "session_metadata",
                "session_id": sid,
                "stored_at": time.time(),
                "metadata": dict(metadata),
            },
        )
        await self._update_index(sid, "metadata", cid)
        return cid

    async def _metadata_at(self, cid: str) -> dict[str, Any]:
        record = await self._get(BlobKind.SESSION_METADATA, cid, "session_metadata")
        metadata = record.get("metadata")
        if not isinstance(metadata, dict):
            raise SDKError(SDKErrorCode.STORAGE_ERROR, f"stored metadata {cid} is unreadable")
        return metadata

    async def retrieve_session_metadata(self, ref: str | int) -> dict[str, Any]:
        """Session metadata by CID, or the newest stored for a session id."""
        cid, _ = await self._resolve(ref, "metadata")
        return await self._metadata_at(cid)
