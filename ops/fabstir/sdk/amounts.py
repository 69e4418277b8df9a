"""Token amounts: human decimal strings at the edge, integers inside.

`parse_amount("1.5", 6) == 1_500_000` and `format_amount(1_500_000, 6) == "1.5"`.
Parsing is exact (no float ever touches an amount) and strict: anything that
is not a plain non-negative decimal the token can represent is refused with
`SDKError(INVALID_AMOUNT)` and a message that says how to fix it, because a
silently rounded or misread amount is a money bug.
"""

from __future__ import annotations

import re
from decimal import Decimal

from fabstir.sdk.errors import SDKError, SDKErrorCode

#: The largest value any on-chain amount can take (uint256).
MAX_UINT256 = 2**256 - 1

# 10**78 > 2**256, so no token can use more decimals than this meaningfully.
_MAX_DECIMALS = 77
_AMOUNT_RE = re.compile(r"(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?")
# Long enough for any uint256 with 77 decimals; longer input is refused early
# so hostile strings cost nothing to reject.
_MAX_LEN = 160


def _invalid(value: object, why: str, decimals: int) -> SDKError:
    return SDKError(
        SDKErrorCode.INVALID_AMOUNT,
        f"invalid amount {value!r}: {why}",
        {"value": repr(value), "decimals": decimals},
    )


def _check_decimals(decimals: int) -> None:
    if type(decimals) is not int or not 0 <= decimals <= _MAX_DECIMALS:
        raise SDKError(
            SDKErrorCode.INVALID_ARGUMENT,
            f"token decimals must be an int in 0..{_MAX_DECIMALS}, got {decimals!r}",
        )


def parse_amount(human: str | Decimal, decimals: int) -> int:
    """Convert a human amount ("1.0", "0.0002") to the token's smallest unit.

    Accepts a `str` of digits with an optional fractional part, or a finite
    non-negative `Decimal`. Trailing zeros beyond `decimals` are fine ("1.000"
    with 2 decimals); non-zero digits beyond it are refused rather than
    rounded. Floats and ints are refused: a float is already inexact, and an
    int is ambiguous (whole tokens or smallest units?).

    Raises SDKError(INVALID_AMOUNT) with a message saying what to fix.
    """
    _check_decimals(decimals)
    if isinstance(human, Decimal):
        if not human.is_finite():
            raise _invalid(human, "it must be a finite number", decimals)
        if human.is_signed() and human != 0:
            raise _invalid(human, "it must not be negative", decimals)
        text = format(abs(human), "f")
    elif isinstance(human, str):
        text = human
    elif isinstance(human, bool | int | float):
        raise _invalid(
            human,
            f"pass a decimal string such as {str(human)!r} in whole tokens "
            "(floats are inexact; ints are ambiguous)",
            decimals,
        )
    else:
        raise _invalid(human, f"expected a decimal string, got {type(human).__name__}", decimals)

    if len(text) > _MAX_LEN:
        raise _invalid(text[:20] + "...", "it is too long to be an amount", decimals)
    match = _AMOUNT_RE.fullmatch(text)
    if match is None:
        raise _invalid(text, _why_malformed(text), decimals)
    whole, frac = match.group("int"), match.group("frac") or ""
    significant = frac.rstrip("0")
    if len(significant) > decimals:
        raise _invalid(
            text,
            f"the token has {decimals} decimals; use at most {decimals} digits after the point",
            decimals,
        )
    value: int = int(whole) * 10**decimals + int(significant.ljust(decimals, "0") or "0")
    if value > MAX_UINT256:
        raise _invalid(text, "it is larger than any on-chain amount (uint256)", decimals)
    return value


def _why_malformed(text: str) -> str:
    stripped = text.strip()
    if not stripped:
        return 'it is empty; write a number such as "1.0"'
    if stripped != text:
        return "remove the surrounding spaces"
    if stripped.startswith("-"):
        return "it must not be negative"
    if stripped.startswith("+"):
        return 'drop the "+" sign'
    if stripped.lower().lstrip("+-") in {"nan", "inf", "infinity"}:
        return "it must be a finite number"
    if "e" in stripped.lower():
        return 'write it without an exponent, e.g. "0.0002" not "2e-4"'
    if "," in stripped or "_" in stripped:
        return 'write it without separators, e.g. "1000.5"'
    if stripped.startswith(".") or stripped.endswith("."):
        return 'write a digit on both sides of the point, e.g. "0.5" or "1.0"'
    return 'use digits with at most one ".", e.g. "1.0" or "0.0002"'


def format_amount(value: int, decimals: int) -> str:
    """Render a smallest-unit integer as a human decimal string.

    Always exact; keeps at least one fractional digit ("1.0") like the
    reference's examples, except for tokens with 0 decimals ("5").
    `parse_amount(format_amount(v, d), d) == v` for every valid `v`.
    """
    _check_decimals(decimals)
    if type(value) is not int or not 0 <= value <= MAX_UINT256:
        raise SDKError(
            SDKErrorCode.INVALID_AMOUNT,
            f"amount must be an int in 0..2**256-1 (smallest units), got {value!r}",
            {"value": repr(value), "decimals": decimals},
        )
    if decimals == 0:
        return str(value)
    whole, frac = divmod(value, 10**decimals)
    frac_text = str(frac).rjust(decimals, "0").rstrip("0") or "0"
    return f"{whole}.{frac_text}"
