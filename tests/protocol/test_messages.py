"""The JSON wire protocol: round trips, strict validation, and a fuzz that only ProtocolError escapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabstir.protocol.messages import (
    MAX_FRAME_BYTES,
    MAX_SAFE_INTEGER,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Cancel,
    Chunk,
    Close,
    End,
    ErrorMessage,
    Hello,
    Message,
    Ping,
    Pong,
    Prompt,
    ProtocolError,
    ReceiptAck,
    ReceiptMessage,
    ReceiptRequest,
    SessionInit,
    SessionReady,
    negotiate_version,
    new_nonce,
    parse_message,
)
from fabstir.protocol.receipts import Eip712Domain, recover_receipt_signer, sign_receipt
from fabstir.sdk.errors import ERROR_CODE_DESCRIPTIONS, SDKError, SDKErrorCode

H32 = "0x" + "ab" * 32
SIG = "0x" + "cd" * 65
HOST = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
MARKET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"

SAMPLES: list[Message] = [
    Hello(v=2, nonce=H32, host=HOST, chain_id=31337, marketplace=MARKET, model_id=H32),
    SessionInit(session_id=1, signature=SIG),
    SessionReady(
        session_id=1,
        tokens_used=0,
        content_hash="0x" + "00" * 32,
        max_tokens=5000,
        proof_interval=100,
        price_per_token=10**30,
    ),
    Prompt(id="p-1", text='Grüße 🌍\n"quoted"', max_tokens=64),
    Chunk(id="p-1", text="", tokens_used=3, content_hash=H32),
    End(id="p-1", tokens_used=64, content_hash=H32, finish_reason="length"),
    ReceiptRequest(tokens_used=100, content_hash=H32),
    ReceiptMessage(session_id=1, tokens_used=100, content_hash=H32, signature=SIG),
    ReceiptAck(tokens_used=100),
    Cancel(id="p-1"),
    Ping(ts=1_700_000_000_000),
    Pong(ts=0),
    ErrorMessage(code="RATE_LIMITED", message="slow down"),
    ErrorMessage(code="PROMPT_TOO_LARGE", message="too big", id="p-2"),
    Close(session_id=MAX_SAFE_INTEGER),
]


def _code(raw: str | bytes, **kwargs: Any) -> SDKErrorCode:
    with pytest.raises(ProtocolError) as info:
        parse_message(raw, **kwargs)
    return info.value.code


def test_every_type_has_a_sample() -> None:
    assert {m.TYPE for m in SAMPLES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.TYPE)
def test_round_trip(message: Message) -> None:
    text = message.to_json()
    assert parse_message(text) == message
    assert parse_message(text.encode()) == message
    assert type(message).parse(text) == message
    assert Message.parse(text) == message
    assert json.loads(text)["type"] == message.TYPE


#: The frames whose cumulative count version 2 renamed from `tokens` to `tokens_used`.
COUNTED = [
    m for m in SAMPLES if isinstance(m, Chunk | End | ReceiptRequest | ReceiptMessage | ReceiptAck)
]


def test_version_is_2_and_1_is_still_spoken() -> None:
    assert PROTOCOL_VERSION == 2 and sorted(SUPPORTED_VERSIONS) == [1, 2]
    assert negotiate_version(1) == 1 and negotiate_version(2) == 2
    for bad in (0, 3, "2", True):
        with pytest.raises(ProtocolError) as info:
            negotiate_version(bad)  # type: ignore[arg-type]
        assert info.value.code is SDKErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize("message", COUNTED, ids=lambda m: m.TYPE)
def test_count_is_tokens_used_in_v2_and_tokens_in_v1(message: Message) -> None:
    v2, v1 = json.loads(message.to_json()), json.loads(message.to_json(1))
    assert "tokens_used" in v2 and "tokens" not in v2
    assert "tokens" in v1 and "tokens_used" not in v1
    assert v1["tokens"] == v2["tokens_used"]
    # Either version's frame reads back as the same message.
    assert parse_message(message.to_json(1)) == message == parse_message(message.to_json(2))
    both = {**v2, "tokens": v2["tokens_used"]}
    assert _code(json.dumps(both)) is SDKErrorCode.MALFORMED_MESSAGE


def test_session_init_says_the_version_from_2_on() -> None:
    init = SessionInit(session_id=1, signature=SIG, v=2)
    assert json.loads(init.to_json())["v"] == 2 and init.version == 2
    # A version-1 host refuses unknown fields: it never sees `v`.
    assert "v" not in json.loads(init.to_json(1))
    old = parse_message(init.to_json(1))
    assert isinstance(old, SessionInit) and old.v is None and old.version == 1
    raw = json.loads(init.to_json())
    assert _code(json.dumps({**raw, "v": 3})) is SDKErrorCode.UNSUPPORTED_VERSION
    with pytest.raises(ProtocolError):
        init.to_json(3)


def test_receipt_frame_is_the_receipt_field_for_field() -> None:
    domain = Eip712Domain(31337, MARKET)
    receipt = sign_receipt("0x" + "11" * 32, domain, 5, 42, H32)
    frame = ReceiptMessage.from_receipt(receipt)
    assert frame.to_receipt() == receipt
    assert {k for k in json.loads(frame.to_json()) if k != "type"} == set(receipt.to_dict())
    for version in (1, 2):
        parsed = parse_message(frame.to_json(version))
        assert isinstance(parsed, ReceiptMessage) and parsed.to_receipt() == receipt


def test_wire_forms() -> None:
    ready = SAMPLES[2]
    assert json.loads(ready.to_json())["price_per_token"] == str(10**30)
    assert "id" not in json.loads(ErrorMessage(code="X", message="m").to_json())
    # Non-ASCII travels as UTF-8, not \\u escapes.
    assert "🌍" in SAMPLES[3].to_json()


def test_normalisation() -> None:
    hello = Hello(
        v=1,
        nonce=H32.upper().replace("0X", "0x"),
        host=HOST.lower(),
        chain_id=1,
        marketplace=MARKET.lower(),
        model_id=H32,
    )
    assert hello.nonce == H32 and hello.host == HOST and hello.marketplace == MARKET


def test_receipt_message_carries_a_real_receipt() -> None:
    domain = Eip712Domain(31337, MARKET)
    receipt = sign_receipt(
        "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80", domain, 4, 250, H32
    )
    wire = ReceiptMessage.from_receipt(receipt).to_json()
    back = ReceiptMessage.parse(wire).to_receipt()
    assert back == receipt
    assert recover_receipt_signer(domain, back) == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def test_error_frames_and_codes() -> None:
    err = SDKError(SDKErrorCode.STALE_RECEIPT, "tokens 10 <= 20", {"x": 1})
    frame = ErrorMessage.from_error(err, id="p-1")
    assert frame.code == "STALE_RECEIPT" and frame.error_code is SDKErrorCode.STALE_RECEIPT
    back = parse_message(frame.to_json())
    assert isinstance(back, ErrorMessage)
    raised = back.to_error()
    assert raised.code is SDKErrorCode.STALE_RECEIPT and raised.details["id"] == "p-1"
    # A newer host's unknown code still parses, and maps to INTERNAL_ERROR.
    future = ErrorMessage.parse('{"type":"error","code":"SOMETHING_NEW","message":"?"}')
    assert future.error_code is None
    assert future.to_error().code is SDKErrorCode.INTERNAL_ERROR
    long = ErrorMessage.from_error(SDKError(SDKErrorCode.INTERNAL_ERROR, "x" * 10_000))
    assert len(long.message) == 2048
    assert _code('{"type":"error","code":"lower","message":"m"}') is SDKErrorCode.MALFORMED_MESSAGE


def test_error_code_table_is_complete() -> None:
    reference = {
        "AUTH_FAILED", "AUTH_REQUIRED", "INVALID_SIGNER", "MANAGER_NOT_INITIALIZED",
        "MANAGER_NOT_AUTHENTICATED", "INSUFFICIENT_BALANCE", "TRANSACTION_FAILED",
        "APPROVAL_FAILED", "SESSION_NOT_FOUND", "SESSION_EXPIRED", "INVALID_SESSION_STATE",
        "MODEL_NOT_APPROVED", "MODEL_VALIDATION_FAILED", "INVALID_MODEL_HASH", "STORAGE_ERROR",
        "S5_CONNECTION_FAILED", "WEBSOCKET_CONNECTION_FAILED", "WEBSOCKET_MESSAGE_FAILED",
        "INVALID_PROOF", "PROOF_VERIFICATION_FAILED",
    }  # fmt: skip
    values = {c.value for c in SDKErrorCode}
    assert reference <= values
    assert all(c.name == c.value for c in SDKErrorCode)
    assert set(ERROR_CODE_DESCRIPTIONS) == set(SDKErrorCode)
    err = SDKError(SDKErrorCode.AUTH_REQUIRED, "call authenticate()")
    assert str(err) == "[AUTH_REQUIRED] call authenticate()"
    assert SDKErrorCode.AUTH_REQUIRED == "AUTH_REQUIRED"


def test_every_error_code_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text("utf-8")
    missing = [c.value for c in SDKErrorCode if f"`{c.value}`" not in doc]
    assert not missing, f"docs/protocol.md lacks {missing}"


def _hello(**override: Any) -> str:
    obj: dict[str, Any] = json.loads(SAMPLES[0].to_json())
    obj.update(override)
    return json.dumps(obj)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("", SDKErrorCode.MALFORMED_MESSAGE),
        ("{", SDKErrorCode.MALFORMED_MESSAGE),
        ("[]", SDKErrorCode.MALFORMED_MESSAGE),
        ("null", SDKErrorCode.MALFORMED_MESSAGE),
        ('{"ts": 1}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": 5}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "inference"}', SDKErrorCode.UNKNOWN_MESSAGE_TYPE),
        ('{"type": "ping"}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "ping", "ts": 1, "extra": 2}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "ping", "ts": 1, "ts": 2}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "ping", "ts": true}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "ping", "ts": 1.0}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "ping", "ts": NaN}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "ping", "ts": Infinity}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "ping", "ts": -1}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "ping", "ts": 9007199254740992}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "ping", "ts": "1"}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "ping", "ts": ' + "9" * 5000 + "}", SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "cancel", "id": ""}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "cancel", "id": "a b"}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "cancel", "id": "' + "a" * 65 + '"}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "prompt", "id": "1", "text": "\\ud800", "max_tokens": 1}',
         SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "prompt", "id": "1", "text": "hi", "max_tokens": 0}',
         SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "prompt", "id": "1", "text": null, "max_tokens": 1}',
         SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "receipt_ack", "tokens": [1]}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "end", "id": "1", "tokens": 1, "content_hash": "' + H32 + '", '
         '"finish_reason": "bored"}', SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "receipt_request", "tokens": 1, "content_hash": "0x12"}',
         SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "session_init", "session_id": 1, "signature": "0x' + "ab" * 64 + '"}',
         SDKErrorCode.MALFORMED_MESSAGE),
        ('{"type": "error", "code": "X", "message": "m", "id": null}',
         SDKErrorCode.MALFORMED_MESSAGE),
        ("[" * 100_000 + "]" * 100_000, SDKErrorCode.MALFORMED_MESSAGE),
        (_hello(v=3), SDKErrorCode.UNSUPPORTED_VERSION),
        (_hello(v=0), SDKErrorCode.UNSUPPORTED_VERSION),
        (_hello(v="1"), SDKErrorCode.UNSUPPORTED_VERSION),
        (_hello(host="0x70997970c51812dc3A010C7d01b50e0d17dc79C8"), SDKErrorCode.MALFORMED_MESSAGE),
        (_hello(chain_id=0), SDKErrorCode.MALFORMED_MESSAGE),
    ],
)  # fmt: skip
def test_malformed_frames(raw: str, code: SDKErrorCode) -> None:
    assert _code(raw) is code


def test_price_per_token_must_be_a_decimal_string() -> None:
    obj = json.loads(SAMPLES[2].to_json())
    for bad in (200, "0200", "-1", "1.5", str(2**256), "", " 1"):
        obj["price_per_token"] = bad
        assert _code(json.dumps(obj)) is SDKErrorCode.MALFORMED_MESSAGE, bad


def test_size_encoding_and_direction_limits() -> None:
    big = '{"type":"prompt","id":"1","text":"' + "a" * MAX_FRAME_BYTES + '","max_tokens":1}'
    assert _code(big) is SDKErrorCode.MESSAGE_TOO_LARGE
    assert _code(big.encode()) is SDKErrorCode.MESSAGE_TOO_LARGE
    assert _code(SAMPLES[10].to_json(), max_bytes=10) is SDKErrorCode.MESSAGE_TOO_LARGE
    assert _code(b'{"type":"ping","ts":1}\xff') is SDKErrorCode.MALFORMED_MESSAGE
    assert _code(b"\xfe\xff\x00{") is SDKErrorCode.MALFORMED_MESSAGE
    chunk = SAMPLES[4].to_json()
    assert _code(chunk, sender="client") is SDKErrorCode.UNKNOWN_MESSAGE_TYPE
    assert isinstance(parse_message(chunk, sender="host"), Chunk)
    prompt = SAMPLES[3].to_json()
    assert _code(prompt, sender="host") is SDKErrorCode.UNKNOWN_MESSAGE_TYPE
    for both in (SAMPLES[10], SAMPLES[11]):  # ping/pong go both ways
        assert parse_message(both.to_json(), sender="host") == both
        assert parse_message(both.to_json(), sender="client") == both
    with pytest.raises(ProtocolError) as info:
        Prompt.parse(chunk)
    assert info.value.code is SDKErrorCode.MALFORMED_MESSAGE
    with pytest.raises(ProtocolError):
        parse_message(123)  # type: ignore[arg-type]


def test_deep_nesting_cannot_crash_a_process_with_a_raised_recursion_limit() -> None:
    # py-evm/py_ecc set the limit to 100000 on import; without the container
    # bound json's C parser then segfaults on this frame. Run it in a child so
    # a regression fails this test instead of killing the test run.
    code = (
        "import sys; sys.setrecursionlimit(100_000)\n"
        "from fabstir.protocol.messages import ProtocolError, parse_message\n"
        "for frame in ('[' * 400_000, '{\"a\":' * 200_000, '[' * 64 + ']' * 64):\n"
        "    try:\n"
        "        parse_message(frame)\n"
        "    except ProtocolError:\n"
        "        pass\n"
        "print('alive')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and "alive" in result.stdout, result.stderr[-2000:]
    # Brackets inside strings are text, not nesting.
    code_prompt = Prompt(id="1", text="{[" * 10_000, max_tokens=1)
    assert parse_message(code_prompt.to_json()) == code_prompt


def test_constructing_an_invalid_message_raises() -> None:
    with pytest.raises(ProtocolError):
        Chunk(id="1", text="x", tokens_used=-1, content_hash=H32)
    with pytest.raises(ProtocolError):
        Hello(v=1, nonce="nope", host=HOST, chain_id=1, marketplace=MARKET, model_id=H32)


def test_new_nonce_is_fresh_and_well_formed() -> None:
    a, b = new_nonce(), new_nonce()
    assert a != b
    assert Hello(v=PROTOCOL_VERSION, nonce=a, host=HOST, chain_id=1, marketplace=MARKET,
                 model_id=H32).nonce == a  # fmt: skip


# --- fuzz: nothing but ProtocolError may escape ----------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=80)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    sorted({name for m in SAMPLES for name in json.loads(m.to_json())} | {"extra"})
)


def _parse_or_protocol_error(raw: str | bytes) -> None:
    try:
        message = parse_message(raw)
    except ProtocolError as exc:
        assert isinstance(exc.code, SDKErrorCode)
        return
    # Whatever parses must render and re-parse to itself.
    assert parse_message(message.to_json()) == message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_bytes(raw: bytes) -> None:
    _parse_or_protocol_error(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_text(raw: str) -> None:
    _parse_or_protocol_error(raw)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_fuzz_json_values(value: Any) -> None:
    _parse_or_protocol_error(json.dumps(value))


@settings(max_examples=600, deadline=None)
@given(
    st.sampled_from(SAMPLES),
    st.lists(st.tuples(field_names, json_values | st.sampled_from([H32, SIG, HOST, "x"])),
             max_size=3),
    st.lists(field_names, max_size=2),
)  # fmt: skip
def test_fuzz_mutated_valid_frames(
    base: Message, replace: list[tuple[str, Any]], drop: list[str]
) -> None:
    obj = json.loads(base.to_json())
    for name, value in replace:
        obj[name] = value
    for name in drop:
        obj.pop(name, None)
    _parse_or_protocol_error(json.dumps(obj))
    _parse_or_protocol_error(json.dumps(obj).encode("utf-16"))
