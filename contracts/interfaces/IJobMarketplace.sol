// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IVault} from "./ILedgers.sol";

/// @title IJobMarketplace
/// @notice Escrow for pay-per-token inference sessions, and the vault that holds every
///         token in the system. Users keep an in-contract balance per token; a session
///         draws its escrow from it and settlement refunds the unused part to it. The
///         host is paid only for tokens the client signed for in an EIP-712 receipt
///         (`Checkpoint(sessionId, tokensUsed, contentHash)`, signed by the session key).
///         Settlement is bookkeeping (HostEarnings / Treasury ledgers); tokens move only
///         when someone withdraws, and nothing is ever pushed to a user.
///         Errors shared with other contracts (ZeroAddress, ZeroAmount, InvalidRecipient,
///         ModelNotApproved) are declared once in contracts/Errors.sol.
interface IJobMarketplace is IVault {
    /// @notice A session's life: Active, then Closing after a close request, then Settled.
    enum Status {
        None,
        Active,
        Closing,
        Settled
    }

    /// @notice Why a receipt or a batch item was not accepted (Ok = accepted).
    enum Outcome {
        Ok,
        UnknownSession,
        NotOpen,
        NotHost,
        StaleReceipt,
        ExceedsDeposit,
        BadSignature
    }

    /// @notice Everything known about a session, decoded for callers.
    struct SessionInfo {
        uint256 id;
        address depositor;
        address host;
        address sessionKey;
        address token;
        bytes32 modelId;
        uint256 pricePerToken;
        uint256 deposit;
        uint256 maxTokens;
        uint256 tokensUsed;
        uint256 endsAt;
        uint256 finalizeAfter;
        uint256 proofInterval;
        Status status;
    }

    /// @notice A receipt to record and settle in settleBatch (tokensUsed 0: settle as recorded).
    struct SettleItem {
        uint256 sessionId;
        uint256 tokensUsed;
        bytes32 contentHash;
        bytes signature;
    }

    /// @notice A payment token's terms: accepted now, its one-byte index, its minimum escrow.
    struct TokenConfig {
        bool accepted;
        uint8 index;
        uint96 minDeposit;
    }

    error FeeTooHigh(uint256 feeBps, uint256 maxFeeBps);
    error InvalidSettlementWindow(uint256 window);
    error UnbondingTooShort(uint256 unbondingPeriod, uint256 settlementWindow);
    error LedgerNotBound(address ledger);
    error TooManyTokens();
    error TokenNotAccepted(address token);
    error WrongEthValue(uint256 sent, uint256 expected);
    error UnsupportedToken(address token, uint256 expected, uint256 received);
    error InsufficientBalance(uint256 available, uint256 required);
    error EthTransferFailed(address to, uint256 amount);
    error InvalidPrice(uint256 pricePerToken);
    error InvalidDuration(uint256 duration);
    error InvalidProofInterval(uint256 proofInterval);
    error DepositBelowProofInterval(uint256 maxTokens, uint256 proofInterval);
    error DepositTooLarge(uint256 deposit);
    error DepositBelowMinimum(uint256 deposit, uint256 minDeposit);
    error SelfSession();
    error SessionKeyIsHost();
    error HostNotActive(address host);
    error HostDoesNotServeModel(address host, bytes32 modelId);
    error HostDoesNotAcceptToken(address host, address token);
    error PriceBelowHostMinimum(uint256 pricePerToken, uint256 minPrice);
    error UnknownSession(uint256 sessionId);
    error SessionNotOpen(uint256 sessionId, Status status);
    error NotSessionHost(address caller);
    error NotSessionClient(address caller);
    error StaleReceipt(uint256 tokensUsed, uint256 recorded);
    error ExceedsDeposit(uint256 tokensUsed, uint256 maxTokens);
    error InvalidReceiptSigner(uint256 sessionId);
    error SettlementWindowOpen(uint256 finalizeAfter);
    error OnlyLedger();
    error EmptyBatch();
    error BatchTooLarge(uint256 size);

    /// @notice A payment token was accepted or de-listed, or its minimum deposit changed.
    event TokenConfigured(address indexed token, bool accepted, uint256 minDeposit, uint8 index);
    /// @notice `amount` was added to `user`'s in-contract balance.
    event Deposited(address indexed user, address indexed token, uint256 amount);
    /// @notice `amount` of `user`'s balance was paid out to `to` (the user itself for `withdraw`).
    event Withdrawn(address indexed user, address indexed token, uint256 amount, address to);
    /// @notice A session was opened; `deposit` is the escrow actually locked.
    event SessionCreated(
        uint256 indexed sessionId,
        address indexed depositor,
        address indexed host,
        bytes32 modelId,
        address token,
        uint256 deposit,
        uint256 pricePerToken,
        uint256 endsAt,
        uint256 proofInterval,
        address sessionKey
    );
    /// @notice A newer receipt was recorded.
    event CheckpointSubmitted(uint256 indexed sessionId, uint256 tokensUsed, bytes32 contentHash);
    /// @notice The client asked to end the session; anyone may finalize after `finalizeAfter`.
    event CloseRequested(uint256 indexed sessionId, address indexed by, uint256 finalizeAfter);
    /// @notice A session was settled: hostAmount + fee + refund == its escrow.
    event SessionSettled(
        uint256 indexed sessionId,
        address indexed host,
        address token,
        uint256 tokensUsed,
        uint256 hostAmount,
        uint256 fee,
        uint256 refund
    );
    /// @notice A settleBatch item was not settled, and why.
    event BatchItemSkipped(uint256 indexed sessionId, Outcome reason);
    /// @notice The registry refused the reputation update; settlement went ahead.
    event ReputationNotRecorded(address indexed host);

    // ------------------------------------------------------------------ admin

    /// @notice Accept (or stop accepting) a payment token and set its minimum session
    ///         deposit. Stopping blocks new deposits and sessions in it; balances,
    ///         open sessions and withdrawals are unaffected. TOKEN_ADMIN_ROLE only.
    function configureToken(address token, bool accepted, uint96 minDeposit) external;

    /// @notice Stop new sessions. Deposits, receipts, settlement, finalize and withdrawals
    ///         go on. PAUSER_ROLE only.
    function pause() external;

    /// @notice Allow new sessions again. PAUSER_ROLE only.
    function unpause() external;

    // --------------------------------------------------------------- balances

    /// @notice Add to the caller's in-contract balance. ETH: token = address(0) and
    ///         msg.value == amount. ERC20: approve first; tokens that deliver less than
    ///         `amount` (fee-on-transfer) are refused. Balance + escrow stay within 128 bits.
    function deposit(address token, uint256 amount) external payable;

    /// @notice Take `amount` of the caller's in-contract balance out to the caller.
    function withdraw(address token, uint256 amount) external;

    /// @notice Take `amount` of the caller's in-contract balance out to `to`: for a caller
    ///         that cannot receive (a contract without `receive()`, an address the token
    ///         blocklists). `to` may not be zero or this vault.
    function withdrawTo(address token, address to, uint256 amount) external;

    // --------------------------------------------------------------- sessions

    /// @notice Open a session paid from the caller's in-contract balance.
    /// @param host the host that will serve it
    /// @param modelId approved model the host serves
    /// @param token payment token (address(0) = ETH)
    /// @param deposit most the session may cost; only whole tokens' worth
    ///        (deposit / price * price) is escrowed, the remainder stays in the balance
    /// @param pricePerToken smallest units of `token` per generated token, >= host minimum
    /// @param duration seconds until the session expires, MIN_DURATION..maxDuration
    /// @param proofInterval most tokens the host streams beyond the newest receipt
    /// @param sessionKey address allowed to sign receipts (0: the caller signs)
    /// @return sessionId the new session (also its job id)
    function createSession(
        address host,
        bytes32 modelId,
        address token,
        uint256 deposit,
        uint256 pricePerToken,
        uint256 duration,
        uint256 proofInterval,
        address sessionKey
    ) external returns (uint256 sessionId);

    /// @notice Open a session, taking from the wallet whatever the in-contract balance
    ///         lacks: ETH as msg.value (any excess stays in the balance), an ERC20 via
    ///         transferFrom (approve first). Same parameters as createSession.
    function createSessionFromWallet(
        address host,
        bytes32 modelId,
        address token,
        uint256 deposit,
        uint256 pricePerToken,
        uint256 duration,
        uint256 proofInterval,
        address sessionKey
    ) external payable returns (uint256 sessionId);

    /// @notice Record a newer receipt. Anyone holding it may submit (normally the host).
    /// @param tokensUsed cumulative tokens the client acknowledges; must exceed the recorded
    ///        count and fit the deposit
    /// @param contentHash the client's transcript hash at that point (kept in the event)
    /// @param signature the session key's EIP-712 Checkpoint signature (65 bytes)
    function submitCheckpoint(uint256 sessionId, uint256 tokensUsed, bytes32 contentHash, bytes calldata signature)
        external;

    /// @notice Host: settle now with the newest recorded receipt.
    function settle(uint256 sessionId) external;

    /// @notice Host: record a newer receipt and settle with it, in one call. A receipt equal
    ///         to the recorded one (someone copied it into submitCheckpoint first) settles
    ///         as recorded.
    function settleWithReceipt(uint256 sessionId, uint256 tokensUsed, bytes32 contentHash, bytes calldata signature)
        external;

    /// @notice Host: settle many of its sessions at once. A bad item (not the caller's,
    ///         already settled, stale or invalid receipt) is skipped with an event and
    ///         does not revert the others; an item whose tokensUsed is 0 or equal to the
    ///         recorded count settles as recorded.
    /// @return outcomes one per item, Outcome.Ok where the session was settled
    function settleBatch(SettleItem[] calldata items) external returns (Outcome[] memory outcomes);

    /// @notice Client (depositor or session key): ask to end the session. The host then has
    ///         `settlementWindow` seconds to post a newer receipt; after that anyone may finalize.
    function requestClose(uint256 sessionId) external;

    /// @notice Client: record its newest receipt (if not recorded already) and ask to end
    ///         the session, in one call.
    function requestCloseWithReceipt(
        uint256 sessionId,
        uint256 tokensUsed,
        bytes32 contentHash,
        bytes calldata signature
    ) external;

    /// @notice Anyone: settle a session with its last recorded receipt once the settlement
    ///         window after its close request or expiry has passed.
    function finalize(uint256 sessionId) external;

    // ------------------------------------------------------------------ views

    /// @notice Seconds the host has after a close request (or expiry) to post a newer receipt.
    function settlementWindow() external view returns (uint256);

    /// @notice Longest session this deployment opens: MAX_DURATION, shortened so that
    ///         maxDuration + settlementWindow <= the registry's unbonding period. A host that
    ///         unregisters can then take its stake back only once every session it could
    ///         still settle is past its settlement window (finalizable by anyone), so the
    ///         stake stays slashable for as long as the host can be paid.
    function maxDuration() external view returns (uint256);

    /// @notice A session, decoded; reverts for an unknown id.
    function getSession(uint256 sessionId) external view returns (SessionInfo memory info);

    /// @notice What the session can still pay for: tokens left and their cost.
    function remainingBudget(uint256 sessionId) external view returns (uint256 tokens, uint256 amount);

    /// @notice Would this receipt be accepted now? Outcome.Ok if so (for off-chain checks).
    function checkReceipt(uint256 sessionId, uint256 tokensUsed, bytes32 contentHash, bytes calldata signature)
        external
        view
        returns (Outcome);

    /// @notice Number of sessions ever created (ids run 1..sessionCount).
    function sessionCount() external view returns (uint256);

    /// @notice A user's in-contract balance of `token` (free to withdraw or spend).
    function balanceOf(address user, address token) external view returns (uint256);

    /// @notice What a user has locked in open sessions, in `token`.
    function escrowedOf(address user, address token) external view returns (uint256);

    /// @notice Whether `token` is accepted, its one-byte index and minimum deposit.
    function tokenConfig(address token) external view returns (TokenConfig memory);

    /// @notice Every token ever configured, by index (index 0 is ETH).
    function tokens() external view returns (address[] memory);

    /// @notice The EIP-712 domain separator receipts for this marketplace use.
    function domainSeparator() external view returns (bytes32);
}
