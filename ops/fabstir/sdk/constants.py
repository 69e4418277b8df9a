"""The API reference's constants, resolved as DESIGN.md decides.

Names are the reference's. Where a value or unit departs from it, the comment
on that line says how and why. Durations are in seconds (Python convention),
not the reference's milliseconds.
"""

from __future__ import annotations

from typing import Final

from fabstir.protocol.messages import PROTOCOL_VERSION
from fabstir.protocol.receipts import DOMAIN_NAME, DOMAIN_VERSION

# --- Network ---------------------------------------------------------------
BASE_SEPOLIA_CHAIN_ID: Final = 84532
BASE_SEPOLIA_CHAIN_HEX: Final = "0x14a34"
# Addition: the local anvil chain the CLI and the tests use.
LOCAL_CHAIN_ID: Final = 31337
# Addition: the SDK's default chain (issue 5).
DEFAULT_CHAIN_ID: Final = BASE_SEPOLIA_CHAIN_ID

# --- Tokens ----------------------------------------------------------------
# Addition: ETH is the zero address in every per-token mapping on chain.
NATIVE_TOKEN_ADDRESS: Final = "0x0000000000000000000000000000000000000000"
# Addition: Circle's USDC on Base Sepolia (live networks take it from config).
BASE_SEPOLIA_USDC_ADDRESS: Final = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
# Additions: fallbacks only; the SDK reads decimals() from the token.
USDC_DECIMALS: Final = 6
ETH_DECIMALS: Final = 18

# --- Payment ---------------------------------------------------------------
# Departure: the reference's constants say "2", its text says $1. DESIGN.md
# picks 1.0 as the default; the contract's per-token minimum (set by an
# admin) is what is enforced, so read that when it matters.
MIN_USDC_DEPOSIT: Final = "1.0"
# Smallest unit of the payment token per generated token (200 = 0.0002 USDC).
DEFAULT_PRICE_PER_TOKEN: Final = 200
DEFAULT_SESSION_DURATION: Final = 3600  # seconds
# Departure: the reference's comment says "100 seconds"; proofInterval is in
# tokens everywhere (DESIGN.md section 2).
DEFAULT_PROOF_INTERVAL: Final = 100  # tokens

# --- Proofs ----------------------------------------------------------------
# Departure: the reference accepts any 64+ bytes; a proof is now the client's
# 65-byte EIP-712 receipt signature (r || s || v), anything else is refused.
MIN_PROOF_LENGTH: Final = 65
PROOF_LENGTH: Final = 65
# Estimate kept from the reference; real costs come from eth_estimateGas.
PROOF_VERIFICATION_GAS: Final = 200_000
# Additions: the EIP-712 domain every receipt is bound to (with chain id and
# the JobMarketplace address).
EIP712_DOMAIN_NAME: Final = DOMAIN_NAME
EIP712_DOMAIN_VERSION: Final = DOMAIN_VERSION

# --- Rate limiting -----------------------------------------------------------
# Departure: advisory, used by the SDK and host; never enforced on chain
# (receipts make on-chain rate limits unnecessary, DESIGN.md section 6).
TOKEN_GENERATION_RATE: Final = 10  # tokens per second
TOKEN_BURST_MULTIPLIER: Final = 2

# --- Payment distribution ----------------------------------------------------
# Defaults only: the fee is set at deploy (and capped) in the contract; read
# it from there for real numbers.
HOST_PAYMENT_PERCENTAGE: Final = 90
TREASURY_FEE_PERCENTAGE: Final = 10

# --- WebSocket -----------------------------------------------------------------
WS_RECONNECT_INTERVAL: Final = 5.0  # seconds (reference: 5000 ms); backoff base
WS_MAX_RECONNECT_ATTEMPTS: Final = 5
WS_HEARTBEAT_INTERVAL: Final = 30.0  # seconds (reference: 30000 ms)
# Addition: the wire protocol version spoken over the WebSocket.
WS_PROTOCOL_VERSION: Final = PROTOCOL_VERSION

# --- Storage -------------------------------------------------------------------
# Kept for parity with the reference; S5 is not the default backend here.
DEFAULT_S5_PORTAL: Final = "wss://z2DWuPbL5pweybXnEB618pMnV58ECj2VPDNfVGm3tFqBvjF@s5.ninja/s5/p2p"
S5_UPLOAD_TIMEOUT: Final = 60.0  # seconds (reference: 60000 ms)
S5_DOWNLOAD_TIMEOUT: Final = 30.0  # seconds (reference: 30000 ms)
# Departure: the embedded default is a local encrypted store (DESIGN.md s4);
# networked backends plug in by URL. Used when no storage URL is configured.
DEFAULT_STORAGE_DIR: Final = "~/.fabstir/storage"
# Addition: where a local IPFS (kubo) node serves its HTTP RPC API by default.
DEFAULT_IPFS_API_URL: Final = "http://127.0.0.1:5001"
# Additions: the same timeouts, for every networked storage backend.
STORAGE_UPLOAD_TIMEOUT: Final = S5_UPLOAD_TIMEOUT
STORAGE_DOWNLOAD_TIMEOUT: Final = S5_DOWNLOAD_TIMEOUT
