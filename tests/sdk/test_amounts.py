"""Human amount strings <-> smallest-unit integers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabstir.sdk import constants
from fabstir.sdk.amounts import MAX_UINT256, format_amount, parse_amount
from fabstir.sdk.errors import SDKError, SDKErrorCode


@pytest.mark.parametrize(
    ("human", "decimals", "expected"),
    [
        ("1.0", 6, 1_000_000),
        ("1", 6, 1_000_000),
        ("0.0002", 6, 200),
        ("0.000001", 6, 1),
        ("0", 6, 0),
        ("0.0", 18, 0),
        ("1.000000000", 6, 1_000_000),  # zeros past the decimals lose nothing
        ("123456.789", 18, 123456789 * 10**15),
        ("007", 0, 7),
        ("5.00", 0, 5),
        (Decimal("1.5"), 6, 1_500_000),
        (Decimal("1E+2"), 6, 100_000_000),
        (Decimal("-0"), 6, 0),
        (constants.MIN_USDC_DEPOSIT, constants.USDC_DECIMALS, 1_000_000),
    ],
)
def test_parse(human: Any, decimals: int, expected: int) -> None:
    assert parse_amount(human, decimals) == expected


@pytest.mark.parametrize(
    ("human", "hint"),
    [
        ("-1", "negative"),
        ("+1", '"+"'),
        ("", "empty"),
        (" 1", "spaces"),
        ("1 ", "spaces"),
        ("NaN", "finite"),
        ("inf", "finite"),
        ("-Infinity", "negative"),
        ("1e5", "exponent"),
        ("1,000", "separators"),
        ("1_000", "separators"),
        (".5", "both sides"),
        ("1.", "both sides"),
        ("1.2.3", "digits"),
        ("0x10", "digits"),
        ("\u0661", "digits"),  # ARABIC-INDIC DIGIT ONE: int() takes it, we must not
        ("0.0000001", "at most 6 digits"),
        ("9" * 200, "too long"),
        ("9" * 75, "uint256"),
        (1.5, "decimal string"),
        (1, "decimal string"),
        (True, "decimal string"),
        (None, "expected a decimal string"),
        (Decimal("NaN"), "finite"),
        (Decimal("-1"), "negative"),
    ],
)
def test_parse_rejects_with_a_fix(human: Any, hint: str) -> None:
    with pytest.raises(SDKError) as info:
        parse_amount(human, 6)
    assert info.value.code is SDKErrorCode.INVALID_AMOUNT
    assert hint in info.value.message
    assert info.value.details["decimals"] == 6


@pytest.mark.parametrize("decimals", [-1, 78, True, 6.0])
def test_bad_decimals(decimals: Any) -> None:
    with pytest.raises(SDKError) as info:
        parse_amount("1", decimals)
    assert info.value.code is SDKErrorCode.INVALID_ARGUMENT
    with pytest.raises(SDKError):
        format_amount(1, decimals)


@pytest.mark.parametrize(
    ("value", "decimals", "expected"),
    [
        (1_000_000, 6, "1.0"),
        (200, 6, "0.0002"),
        (0, 6, "0.0"),
        (1_500_000, 6, "1.5"),
        (10**18 + 1, 18, "1.000000000000000001"),
        (5, 0, "5"),
        (MAX_UINT256, 0, str(MAX_UINT256)),
    ],
)
def test_format(value: int, decimals: int, expected: str) -> None:
    assert format_amount(value, decimals) == expected


@pytest.mark.parametrize("value", [-1, 2**256, 1.0, "1", True])
def test_format_rejects(value: Any) -> None:
    with pytest.raises(SDKError) as info:
        format_amount(value, 6)
    assert info.value.code is SDKErrorCode.INVALID_AMOUNT


@given(st.integers(0, MAX_UINT256), st.integers(0, 77))
def test_round_trip(value: int, decimals: int) -> None:
    assert parse_amount(format_amount(value, decimals), decimals) == value


@given(st.text(max_size=40))
def test_arbitrary_text_is_an_amount_or_invalid_amount(text: str) -> None:
    try:
        value = parse_amount(text, 6)
    except SDKError as exc:
        assert exc.code is SDKErrorCode.INVALID_AMOUNT
    else:
        assert 0 <= value <= MAX_UINT256


def test_constants_resolutions() -> None:
    assert constants.MIN_USDC_DEPOSIT == "1.0"
    assert constants.DEFAULT_PROOF_INTERVAL == 100
    assert constants.HOST_PAYMENT_PERCENTAGE + constants.TREASURY_FEE_PERCENTAGE == 100
    assert int(constants.BASE_SEPOLIA_CHAIN_HEX, 16) == constants.BASE_SEPOLIA_CHAIN_ID
    assert constants.MIN_PROOF_LENGTH == 65
    # The reference's "200 = 0.0002 USDC per token".
    assert format_amount(constants.DEFAULT_PRICE_PER_TOKEN, constants.USDC_DECIMALS) == "0.0002"
