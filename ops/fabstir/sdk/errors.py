"""The SDK's typed errors: the project's one error type, re-exported.

`SDKError` and `SDKErrorCode` are defined in the core (`fabstir.errors`) so
the host worker and the wire protocol use them without importing the client
SDK; this module keeps the SDK's public import path (`fabstir.sdk.errors`).
"""

from fabstir.errors import ERROR_CODE_DESCRIPTIONS, SDKError, SDKErrorCode

__all__ = ["ERROR_CODE_DESCRIPTIONS", "SDKError", "SDKErrorCode"]
