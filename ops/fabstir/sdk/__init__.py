"""The Fabstir Python SDK (client side): the API reference's managers in Python.

Kept import-light on purpose: the host worker imports `fabstir.sdk.errors`
and must not pull in the chain client or storage along with it.
"""

from fabstir.sdk.errors import SDKError, SDKErrorCode

__all__ = ["SDKError", "SDKErrorCode"]
