"""The versioned JSON wire protocol between SDK clients and host workers.

One WebSocket text frame carries one JSON object with a `type` and that
type's fields, nothing more (docs/protocol.md describes the flow). Every
message is a frozen dataclass; constructing one validates it, `to_json()`
renders it, and `parse_message(raw)` / `<Class>.parse(raw)` read one strictly:
anything malformed (bad JSON, duplicate keys, unknown type, missing or extra
fields, wrong types, out-of-range numbers, bad hex, text that is not valid
Unicode) raises `ProtocolError` and nothing else, so a host can answer with
an `error` frame and carry on.

Versions: this side speaks PROTOCOL_VERSION (2) and still speaks 1 with a
peer that does (docs/protocol.md, "Versioning"). The host's `hello` says its
version; the client answers in `session_init.v` (absent: 1) with the version
both use, and each side then writes its frames in that version
(`to_json(version=...)`). The parser reads either version's field names.
Version 2 renamed the cumulative count `tokens` to `tokens_used` in chunk,
end, receipt_request, receipt and receipt_ack, the name the receipt has
everywhere else.

Number rules: counts (session ids, tokens, timestamps) are JSON integers in
0..2**53-1, safe in every JSON implementation; `price_per_token`, a token
amount that can exceed 2**53 for 18-decimal tokens, is a decimal string.
Hashes, nonces and signatures are 0x-prefixed hex (normalised to lowercase),
addresses are normalised to their checksum form.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal, Self

from eth_utils.address import to_checksum_address

from fabstir.errors import SDKError, SDKErrorCode
from fabstir.protocol.receipts import Receipt, is_valid_address

PROTOCOL_VERSION: Final = 2
#: The versions this side can speak (reads and writes) with a peer.
SUPPORTED_VERSIONS: Final = frozenset({1, 2})
#: Frames above this are refused before JSON parsing (hosts may set lower).
MAX_FRAME_BYTES: Final = 1 << 20
MAX_SAFE_INTEGER: Final = 2**53 - 1
MAX_ID_LENGTH: Final = 64
MAX_ERROR_MESSAGE_LENGTH: Final = 2048
MAX_HISTORY_TURNS: Final = 48
MAX_HISTORY_TURN_CHARS: Final = 16_384
#: A self-contained prompt's earlier turns (an OpenAI request's message list).
MAX_CONTEXT_TURNS: Final = 256
MAX_STOP_STRINGS: Final = 4
MAX_STOP_CHARS: Final = 64
#: Why a response ended: natural stop, max_tokens hit, client cancel, session
#: deposit used up, or a host-side failure (an `error` frame follows).
FINISH_REASONS: Final = frozenset({"stop", "length", "cancelled", "budget", "error"})

Sender = Literal["host", "client"]

_HEX32_RE: Final = re.compile(r"0x[0-9a-fA-F]{64}")
_SIGNATURE_RE: Final = re.compile(r"0x[0-9a-fA-F]{130}")
_ID_RE: Final = re.compile(rf"[A-Za-z0-9_.:\-]{{1,{MAX_ID_LENGTH}}}")
_CODE_RE: Final = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_UINT_STRING_RE: Final = re.compile(r"0|[1-9][0-9]{0,77}")
_DECIMAL_RE: Final = re.compile(r"(0|[1-9][0-9]{0,2})(\.[0-9]{1,6})?")
# A JSON string literal, written as an unrolled loop so it scans in linear time.
_JSON_STRING_RE: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
#: No valid frame has nested containers; a few are tolerated for clear errors.
MAX_CONTAINERS: Final = 64


class ProtocolError(SDKError):
    """A frame that breaks the protocol; `code` is what the `error` frame carries."""

    def __init__(
        self, code: SDKErrorCode, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(code, message, details)


def _malformed(message: str) -> ProtocolError:
    return ProtocolError(SDKErrorCode.MALFORMED_MESSAGE, message)


def _short(value: object) -> str:
    # Never echo a hostile megabyte back into an error frame or a log line.
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- field checks: (field name, value) -> normalised value, or ProtocolError ------

Check = Callable[[str, Any], Any]


def _uint(lo: int = 0, hi: int = MAX_SAFE_INTEGER) -> Check:
    def check(name: str, value: Any) -> int:
        if type(value) is not int:
            raise _malformed(f"{name} must be an integer, got {_short(value)}")
        if not lo <= value <= hi:
            raise _malformed(f"{name} must be in {lo}..{hi}, got {value}")
        return value

    return check


def _uint256_string(name: str, value: Any) -> int:
    # Stored as int, carried as a decimal string (see module docstring).
    if type(value) is int and 0 <= value < 2**256:
        return value
    if isinstance(value, str) and _UINT_STRING_RE.fullmatch(value) and int(value) < 2**256:
        return int(value)
    raise _malformed(f"{name} must be a decimal string of a uint256, got {_short(value)}")


def _hex32(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _HEX32_RE.fullmatch(value):
        raise _malformed(f"{name} must be 0x + 64 hex digits, got {_short(value)}")
    return value.lower()


def _signature(name: str, value: Any) -> str:
    # Only the shape here; v, s and the signer are checked by receipts.recover_signer.
    if not isinstance(value, str) or not _SIGNATURE_RE.fullmatch(value):
        raise _malformed(f"{name} must be 0x + 130 hex digits (65 bytes), got {_short(value)}")
    return value.lower()


def _address(name: str, value: Any) -> str:
    if not is_valid_address(value):
        raise _malformed(
            f"{name} must be a 0x address (EIP-55 checksum if mixed case), got {_short(value)}"
        )
    return to_checksum_address(value)


def _request_id(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise _malformed(
            f"{name} must be 1-{MAX_ID_LENGTH} characters of [A-Za-z0-9_.:-], got {_short(value)}"
        )
    return value


def _text(max_chars: int | None = None) -> Check:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise _malformed(f"{name} must be a string, got {_short(value)}")
        if max_chars is not None and len(value) > max_chars:
            raise _malformed(f"{name} is longer than {max_chars} characters")
        try:
            # JSON can carry lone surrogates ("\ud800"); they cannot be hashed
            # as UTF-8, so they never get past the parser.
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _malformed(f"{name} is not valid Unicode (lone surrogate)") from None
        return value

    return check


def _text_list(max_items: int, max_chars: int) -> Check:
    def check(name: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            raise _malformed(f"{name} must be an array of strings, got {_short(value)}")
        if len(value) > max_items:
            raise _malformed(f"{name} has more than {max_items} items")
        text = _text(max_chars)
        return tuple(text(f"{name}[{i}]", item) for i, item in enumerate(value))

    return check


def _decimal_string(lo: str, hi: str, *, open_low: bool = False) -> Check:
    low, high = Decimal(lo), Decimal(hi)

    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or not _DECIMAL_RE.fullmatch(value):
            raise _malformed(f'{name} must be a decimal string like "0.7", got {_short(value)}')
        number = Decimal(value)
        if number > high or number < low or (open_low and number == low):
            bracket = "(" if open_low else "["
            raise _malformed(f"{name} must be in {bracket}{lo}, {hi}], got {value}")
        return value

    return check


def _one_of(allowed: frozenset[str]) -> Check:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise _malformed(f"{name} must be one of {sorted(allowed)}, got {_short(value)}")
        return value

    return check


def _error_code(name: str, value: Any) -> str:
    # Any well-formed code is accepted so a newer peer's codes still parse.
    if isinstance(value, SDKErrorCode):
        return value.value
    if not isinstance(value, str) or not _CODE_RE.fullmatch(value):
        raise _malformed(f"{name} must be an UPPER_SNAKE error code, got {_short(value)}")
    return value


def _version(name: str, value: Any) -> int:
    if type(value) is not int or value not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            SDKErrorCode.UNSUPPORTED_VERSION,
            f"peer speaks protocol version {_short(value)}; this side speaks "
            f"{', '.join(map(str, sorted(SUPPORTED_VERSIONS)))}",
        )
    return value


def _f(check: Check, *, wire_string: bool = False, v1_name: str | None = None) -> Any:
    # v1_name: the field's name in protocol version 1, when it had another one.
    return field(metadata={"check": check, "wire_string": wire_string, "v1_name": v1_name})


def _opt(check: Check, *, since: int = 1) -> Any:
    # since: the first protocol version with the field; older peers never see it.
    return field(
        default=None,
        metadata={"check": check, "wire_string": False, "v1_name": None, "since": since},
    )


def _wire_name(f: Any, version: int) -> str:
    v1_name: str | None = f.metadata["v1_name"]
    return v1_name if version == 1 and v1_name is not None else str(f.name)


def negotiate_version(peer_version: int) -> int:
    """The version two sides use: the lower of the peer's and this side's."""
    return min(_version("v", peer_version), PROTOCOL_VERSION)


# --- messages ---------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """Base of every frame. `TYPE` is the wire `type`; `SENDER` who may send it."""

    TYPE: ClassVar[str] = ""
    SENDER: ClassVar[Sender | None] = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            object.__setattr__(self, f.name, f.metadata["check"](f.name, value))

    def to_dict(self, version: int = PROTOCOL_VERSION) -> dict[str, Any]:
        """The wire object in protocol `version`: `type` first, optional fields left
        out when None or newer than `version`."""
        _version("version", version)
        out: dict[str, Any] = {"type": self.TYPE}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.metadata.get("since", 1) > version:
                continue
            out[_wire_name(f, version)] = str(value) if f.metadata["wire_string"] else value
        return out

    def to_json(self, version: int = PROTOCOL_VERSION) -> str:
        """Compact JSON text for one WebSocket frame, in protocol `version`."""
        return json.dumps(self.to_dict(version), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def parse(cls, raw: str | bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> Self:
        """Parse one frame that must be of this class (any message on `Message`)."""
        message = parse_message(raw, max_bytes=max_bytes)
        if not isinstance(message, cls):
            raise _malformed(f"expected a {cls.TYPE or 'protocol'} frame, got {message.TYPE!r}")
        return message


@dataclass(frozen=True)
class Hello(Message):
    """Host greeting: protocol version, a fresh nonce to sign, and who/what it serves."""

    TYPE: ClassVar[str] = "hello"
    SENDER: ClassVar[Sender | None] = "host"
    #: The host's protocol version (it also speaks the older ones it supports).
    v: int = _f(_version)
    nonce: str = _f(_hex32)
    host: str = _f(_address)
    chain_id: int = _f(_uint(1))
    marketplace: str = _f(_address)
    model_id: str = _f(_hex32)


@dataclass(frozen=True)
class SessionInit(Message):
    """Client opens (or resumes) a session: SessionInit(session_id, nonce) signed
    by the session key (receipts.sign_session_init)."""

    TYPE: ClassVar[str] = "session_init"
    SENDER: ClassVar[Sender | None] = "client"
    session_id: int = _f(_uint())
    signature: str = _f(_signature)
    #: On resume only: the conversation so far, alternating user and assistant
    #: turns, for a host that lost it (restart). Ignored by a host that still has it.
    history: tuple[str, ...] | None = _opt(_text_list(MAX_HISTORY_TURNS, MAX_HISTORY_TURN_CHARS))
    #: The version the client will speak, at most the hello's (since version 2;
    #: absent means 1). The host writes its frames in it.
    v: int | None = _opt(_version, since=2)

    @property
    def version(self) -> int:
        """The protocol version of this session's frames."""
        return 1 if self.v is None else self.v


@dataclass(frozen=True)
class SessionReady(Message):
    """Host checked the session on chain and will serve it.

    `tokens_used`/`content_hash` are the newest acknowledged receipt's values
    (0 and GENESIS for a new session): both sides continue from there.
    `max_tokens` is the session's total budget (deposit // price).
    """

    TYPE: ClassVar[str] = "session_ready"
    SENDER: ClassVar[Sender | None] = "host"
    session_id: int = _f(_uint())
    tokens_used: int = _f(_uint())
    content_hash: str = _f(_hex32)
    max_tokens: int = _f(_uint())
    proof_interval: int = _f(_uint(1))
    price_per_token: int = _f(_uint256_string, wire_string=True)


@dataclass(frozen=True)
class Prompt(Message):
    """Client asks for a completion; `id` names the request in chunk/end/cancel/error.

    Without `context` and `system` the prompt extends the session's conversation.
    With either, it is self-contained (what an OpenAI request is): the host answers
    exactly `system` + `context` + `text` and keeps nothing of it for later prompts.
    `context` holds the earlier turns, alternating user and assistant, starting with
    a user turn. Sampling fields override the host's defaults for this request.
    """

    TYPE: ClassVar[str] = "prompt"
    SENDER: ClassVar[Sender | None] = "client"
    id: str = _f(_request_id)
    text: str = _f(_text())
    max_tokens: int = _f(_uint(1))
    context: tuple[str, ...] | None = _opt(
        _text_list(MAX_CONTEXT_TURNS, MAX_HISTORY_TURN_CHARS), since=2
    )
    system: str | None = _opt(_text(MAX_HISTORY_TURN_CHARS), since=2)
    #: Decimal strings (the protocol has no floats): 0..2 and (0, 1].
    temperature: str | None = _opt(_decimal_string("0", "2"), since=2)
    top_p: str | None = _opt(_decimal_string("0", "1", open_low=True), since=2)
    seed: int | None = _opt(_uint(), since=2)
    stop: tuple[str, ...] | None = _opt(_text_list(MAX_STOP_STRINGS, MAX_STOP_CHARS), since=2)

    @property
    def self_contained(self) -> bool:
        return self.context is not None or self.system is not None

    def transcript_text(self) -> str:
        """What the content hash folds in for this prompt: the text itself, or for a
        self-contained prompt a canonical JSON of everything the host was given, so
        the hash still covers exactly what was sent."""
        if not self.self_contained:
            return self.text
        return json.dumps(
            {"context": list(self.context or ()), "system": self.system, "text": self.text},
            ensure_ascii=False,
            separators=(",", ":"),
            sort_keys=True,
        )


@dataclass(frozen=True)
class Chunk(Message):
    """A piece of the response, with cumulative session tokens and the chain hash after it."""

    TYPE: ClassVar[str] = "chunk"
    SENDER: ClassVar[Sender | None] = "host"
    id: str = _f(_request_id)
    text: str = _f(_text())
    tokens_used: int = _f(_uint(), v1_name="tokens")
    content_hash: str = _f(_hex32)


@dataclass(frozen=True)
class End(Message):
    """The response is over; final cumulative tokens and hash, and why it ended."""

    TYPE: ClassVar[str] = "end"
    SENDER: ClassVar[Sender | None] = "host"
    id: str = _f(_request_id)
    tokens_used: int = _f(_uint(), v1_name="tokens")
    content_hash: str = _f(_hex32)
    finish_reason: str = _f(_one_of(FINISH_REASONS))


@dataclass(frozen=True)
class ReceiptRequest(Message):
    """Host paused: it will not generate until it has a receipt for this state."""

    TYPE: ClassVar[str] = "receipt_request"
    SENDER: ClassVar[Sender | None] = "host"
    tokens_used: int = _f(_uint(), v1_name="tokens")
    content_hash: str = _f(_hex32)


@dataclass(frozen=True)
class ReceiptMessage(Message):
    """A signed Checkpoint receipt: receipts.Receipt on the wire, field for field."""

    TYPE: ClassVar[str] = "receipt"
    SENDER: ClassVar[Sender | None] = "client"
    session_id: int = _f(_uint())
    tokens_used: int = _f(_uint(), v1_name="tokens")
    content_hash: str = _f(_hex32)
    signature: str = _f(_signature)

    @classmethod
    def from_receipt(cls, receipt: Receipt) -> ReceiptMessage:
        """Wrap a signed receipt for sending."""
        return cls(**receipt.to_dict())

    def to_receipt(self) -> Receipt:
        """The receipt to check (receipts.check_receipt), store and settle with."""
        return Receipt(**{f.name: getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class ReceiptAck(Message):
    """Host stored the receipt for `tokens_used` durably (it will settle with it)."""

    TYPE: ClassVar[str] = "receipt_ack"
    SENDER: ClassVar[Sender | None] = "host"
    tokens_used: int = _f(_uint(), v1_name="tokens")


@dataclass(frozen=True)
class Cancel(Message):
    """Client stops a running request; the host answers with end(finish_reason="cancelled")."""

    TYPE: ClassVar[str] = "cancel"
    SENDER: ClassVar[Sender | None] = "client"
    id: str = _f(_request_id)


@dataclass(frozen=True)
class Ping(Message):
    """Heartbeat from either side; `ts` (ms) is echoed in the pong."""

    TYPE: ClassVar[str] = "ping"
    ts: int = _f(_uint())


@dataclass(frozen=True)
class Pong(Message):
    """Answer to a ping, echoing its `ts`."""

    TYPE: ClassVar[str] = "pong"
    ts: int = _f(_uint())


@dataclass(frozen=True)
class ErrorMessage(Message):
    """Host reports a failure: an SDKErrorCode value, a human message, and the
    request id when the error concerns one request."""

    TYPE: ClassVar[str] = "error"
    SENDER: ClassVar[Sender | None] = "host"
    code: str = _f(_error_code)
    message: str = _f(_text(MAX_ERROR_MESSAGE_LENGTH))
    id: str | None = _opt(_request_id)

    @classmethod
    def from_error(cls, error: SDKError, id: str | None = None) -> ErrorMessage:
        """The frame for an SDKError (message truncated to the limit)."""
        return cls(code=error.code.value, message=error.message[:MAX_ERROR_MESSAGE_LENGTH], id=id)

    @property
    def error_code(self) -> SDKErrorCode | None:
        """The code as an SDKErrorCode, or None if this SDK does not know it."""
        try:
            return SDKErrorCode(self.code)
        except ValueError:
            return None

    def to_error(self) -> SDKError:
        """An SDKError to raise on the client side (unknown codes become INTERNAL_ERROR)."""
        code = self.error_code or SDKErrorCode.INTERNAL_ERROR
        details: dict[str, Any] = {"remote_code": self.code}
        if self.id is not None:
            details["id"] = self.id
        return SDKError(code, f"host: {self.message}", details)


@dataclass(frozen=True)
class Close(Message):
    """Client is done with the session; the host settles with the newest receipt."""

    TYPE: ClassVar[str] = "close"
    SENDER: ClassVar[Sender | None] = "client"
    session_id: int = _f(_uint())


#: Wire `type` -> message class; the complete protocol.
MESSAGE_TYPES: Final[Mapping[str, type[Message]]] = MappingProxyType(
    {
        cls.TYPE: cls
        for cls in (
            Hello,
            SessionInit,
            SessionReady,
            Prompt,
            Chunk,
            End,
            ReceiptRequest,
            ReceiptMessage,
            ReceiptAck,
            Cancel,
            Ping,
            Pong,
            ErrorMessage,
            Close,
        )
    }
)


# --- parsing ----------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _malformed(f"duplicate key {_short(key)}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise _malformed(f"{name} is not valid JSON")


def _too_many_containers(text: str) -> bool:
    # json's C parser recurses once per nesting level. py-evm and py_ecc raise
    # the recursion limit to 100000 on import, and then "[[[[..." a megabyte
    # deep overflows the C stack and kills the process. Bounding the number of
    # containers bounds the depth; brackets inside strings (code in a prompt)
    # do not count.
    if text.count("[") + text.count("{") <= MAX_CONTAINERS:
        return False
    structure = _JSON_STRING_RE.sub('""', text)
    return structure.count("[") + structure.count("{") > MAX_CONTAINERS


def parse_message(
    raw: str | bytes, *, max_bytes: int = MAX_FRAME_BYTES, sender: Sender | None = None
) -> Message:
    """Parse one frame into its message class.

    `sender`, when given, is who sent the frame: a type the other side is
    not allowed to send is refused as UNKNOWN_MESSAGE_TYPE (a host never
    accepts a `chunk`). Raises ProtocolError and nothing else.
    """
    if isinstance(raw, bytes | bytearray | memoryview):
        if len(raw) > max_bytes:
            raise ProtocolError(SDKErrorCode.MESSAGE_TOO_LARGE, f"frame exceeds {max_bytes} bytes")
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("frame is not UTF-8") from None
    elif isinstance(raw, str):
        # Characters are at most 4 bytes; counting exactly would cost an encode.
        if len(raw) > max_bytes:
            raise ProtocolError(SDKErrorCode.MESSAGE_TOO_LARGE, f"frame exceeds {max_bytes} bytes")
        text = raw
    else:
        raise _malformed(f"frame must be str or bytes, got {type(raw).__name__}")

    if _too_many_containers(text):
        raise _malformed(f"frame nests more than {MAX_CONTAINERS} arrays/objects")
    try:
        obj = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant
        )
    except ProtocolError:
        raise
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError and int literals past Python's digit limit.
        raise _malformed("frame is not valid JSON") from None

    if not isinstance(obj, dict):
        raise _malformed("frame must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise _malformed('frame needs a string "type"')
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise ProtocolError(
            SDKErrorCode.UNKNOWN_MESSAGE_TYPE, f"unknown message type {_short(kind)}"
        )
    if sender is not None and cls.SENDER not in (None, sender):
        raise ProtocolError(
            SDKErrorCode.UNKNOWN_MESSAGE_TYPE, f"a {sender} does not send {kind!r} frames"
        )
    if cls in (Hello, SessionInit) and "v" in obj:
        # Checked before the schema: another version may have other fields.
        _version("v", obj["v"])

    specs = fields(cls)
    # Each field under its current name or its version-1 name, never both.
    names: dict[str, str] = {}
    for f in specs:
        names[f.name] = f.name
        if f.metadata["v1_name"] is not None:
            names[f.metadata["v1_name"]] = f.name
            if f.name in obj and f.metadata["v1_name"] in obj:
                raise _malformed(
                    f"{kind}: {f.name} and its version-1 name {f.metadata['v1_name']} both given"
                )
    extra = sorted(set(obj) - set(names) - {"type"})
    if extra:
        raise _malformed(f"{kind}: unknown field(s) {_short(extra)}")
    given = {names[key]: key for key in obj if key != "type"}
    missing = [f.name for f in specs if f.default is not None and f.name not in given]
    if missing:
        raise _malformed(f"{kind}: missing field(s) {missing}")
    values: dict[str, Any] = {}
    for f in specs:
        if f.name not in given:
            continue
        value = obj[given[f.name]]
        if value is None:
            # Optional fields are omitted, never null: one way to say "absent".
            raise _malformed(f"{f.name} must be omitted rather than null")
        if f.metadata["wire_string"] and not isinstance(value, str):
            raise _malformed(f"{f.name} must be a decimal string, got {_short(value)}")
        values[f.name] = value
    try:
        return cls(**values)
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:  # pragma: no cover - checks should catch all
        raise _malformed(f"{kind}: {exc}") from None


def new_nonce() -> str:
    """A fresh 32-byte greeting nonce, 0x-hex (the host sends one per connection)."""
    return "0x" + secrets.token_hex(32)
