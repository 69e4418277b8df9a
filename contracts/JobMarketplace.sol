// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {IProofSystem} from "./interfaces/IProofSystem.sol";
import {IHostEarnings, ITreasury, IVault} from "./interfaces/ILedgers.sol";
import {IJobMarketplace} from "./interfaces/IJobMarketplace.sol";
import {InvalidRecipient, ModelNotApproved, ZeroAddress, ZeroAmount} from "./Errors.sol";

/// @title JobMarketplace
/// @notice The vault and session escrow; what it does and promises is documented in
///         IJobMarketplace. Notes here are about how.
contract JobMarketplace is IJobMarketplace, AccessControl, Pausable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice May pause and unpause new sessions.
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");
    /// @notice May accept payment tokens and set their minimum deposits.
    bytes32 public constant TOKEN_ADMIN_ROLE = keccak256("TOKEN_ADMIN_ROLE");

    /// @notice The fee can never be set above this at deploy (basis points).
    uint16 public constant MAX_FEE_BPS = 2000;
    uint256 public constant MIN_DURATION = 60;
    /// @notice No deployment allows sessions longer than this; `maxDuration` may be shorter.
    uint256 public constant MAX_DURATION = 30 days;
    uint256 public constant MIN_SETTLEMENT_WINDOW = 60;
    uint256 public constant MAX_SETTLEMENT_WINDOW = 7 days;
    /// @notice Most sessions one settleBatch call takes.
    uint256 public constant MAX_BATCH = 100;
    /// @notice Payment tokens are numbered in one byte inside a session.
    uint256 public constant MAX_TOKENS = 256;

    /// @dev Three slots. Slot 0 is all a checkpoint reads and writes. What no later call
    ///      needs to trust (content hashes, the model's full id) lives in events.
    struct Session {
        // slot 0
        address sessionKey; // receipt signer (the depositor when none was given)
        uint40 tokensUsed; // newest receipt's cumulative token count
        uint40 maxTokens; // escrow / pricePerToken
        Status status;
        uint8 tokenIndex;
        // slot 1
        address depositor;
        uint64 pricePerToken;
        uint32 modelIndex;
        // slot 2
        address host;
        uint40 endsAt; // start + duration, pulled in to the close request time
        uint24 proofInterval;
    }

    /// @dev One slot per user and token. Keeping the escrow beside the balance means a
    ///      session's start and end write a slot that is already non-zero (5k gas, not 22k)
    ///      and gives the books' identity a per-user term.
    struct Account {
        uint128 balance; // free to withdraw or to fund sessions
        uint128 escrowed; // locked in the user's open sessions
    }

    INodeRegistry public immutable nodeRegistry;
    IModelRegistry public immutable modelRegistry;
    IProofSystem public immutable proofSystem;
    IHostEarnings public immutable hostEarnings;
    ITreasury public immutable treasury;
    /// @inheritdoc IVault
    uint16 public immutable feeBps;
    /// @inheritdoc IJobMarketplace
    uint256 public immutable settlementWindow;
    /// @inheritdoc IJobMarketplace
    uint256 public immutable maxDuration;

    uint256 private _sessionCount;
    mapping(uint256 sessionId => Session) private _sessions;
    mapping(address user => mapping(address token => Account)) private _accounts;
    mapping(address token => TokenConfig) private _tokenConfig;
    address[] private _tokens;

    /// @param admin receives DEFAULT_ADMIN_ROLE, PAUSER_ROLE and TOKEN_ADMIN_ROLE
    /// @param nodes host registry checked at session start
    /// @param proofs receipt verifier
    /// @param earnings host ledger; must name this contract as its marketplace
    /// @param treasury_ fee ledger; must name this contract as its marketplace
    /// @param feeBps_ treasury share of each payment, at most MAX_FEE_BPS
    /// @param settlementWindow_ seconds a host has after close/expiry to post a newer receipt
    /// @param ethMinDeposit minimum ETH escrow per session (ETH is accepted from the start)
    constructor(
        address admin,
        INodeRegistry nodes,
        IProofSystem proofs,
        IHostEarnings earnings,
        ITreasury treasury_,
        uint16 feeBps_,
        uint256 settlementWindow_,
        uint96 ethMinDeposit
    ) {
        if (
            admin == address(0) || address(nodes) == address(0) || address(proofs) == address(0)
                || address(earnings) == address(0) || address(treasury_) == address(0)
        ) revert ZeroAddress();
        if (feeBps_ > MAX_FEE_BPS) revert FeeTooHigh(feeBps_, MAX_FEE_BPS);
        if (settlementWindow_ < MIN_SETTLEMENT_WINDOW || settlementWindow_ > MAX_SETTLEMENT_WINDOW) {
            revert InvalidSettlementWindow(settlementWindow_);
        }
        // The ledgers are deployed first, to this contract's precomputed address.
        if (earnings.marketplace() != address(this)) revert LedgerNotBound(address(earnings));
        if (treasury_.marketplace() != address(this)) revert LedgerNotBound(address(treasury_));
        // The stake lock is structural: no session outlives its host's unbonding period.
        uint256 unbonding = nodes.unbondingPeriod();
        if (unbonding < settlementWindow_ + MIN_DURATION) revert UnbondingTooShort(unbonding, settlementWindow_);
        uint256 longest = unbonding - settlementWindow_;
        maxDuration = longest < MAX_DURATION ? longest : MAX_DURATION;

        nodeRegistry = nodes;
        modelRegistry = IModelRegistry(nodes.modelRegistry());
        proofSystem = proofs;
        hostEarnings = earnings;
        treasury = treasury_;
        feeBps = feeBps_;
        settlementWindow = settlementWindow_;

        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
        _grantRole(TOKEN_ADMIN_ROLE, admin);
        _configureToken(address(0), true, ethMinDeposit);
    }

    // ------------------------------------------------------------------ admin

    /// @inheritdoc IJobMarketplace
    function configureToken(address token, bool accepted, uint96 minDeposit) external onlyRole(TOKEN_ADMIN_ROLE) {
        _configureToken(token, accepted, minDeposit);
    }

    /// @inheritdoc IJobMarketplace
    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    /// @inheritdoc IJobMarketplace
    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    // --------------------------------------------------------------- balances

    /// @inheritdoc IJobMarketplace
    function deposit(address token, uint256 amount) external payable nonReentrant {
        if (!_tokenConfig[token].accepted) revert TokenNotAccepted(token);
        if (amount == 0) revert ZeroAmount();
        if (token == address(0)) {
            if (msg.value != amount) revert WrongEthValue(msg.value, amount);
        } else if (msg.value != 0) {
            revert WrongEthValue(msg.value, 0);
        }
        Account storage a = _accounts[msg.sender][token];
        uint256 balance = a.balance + amount;
        // Bound balance + escrow, not only the balance: settlement moves escrow back into
        // the balance, which must then still fit 128 bits.
        SafeCast.toUint128(balance + a.escrowed);
        a.balance = uint128(balance);
        emit Deposited(msg.sender, token, amount);
        if (token != address(0)) _pull(token, amount);
    }

    /// @inheritdoc IJobMarketplace
    function withdraw(address token, uint256 amount) external nonReentrant {
        _withdraw(token, msg.sender, amount);
    }

    /// @inheritdoc IJobMarketplace
    function withdrawTo(address token, address to, uint256 amount) external nonReentrant {
        if (to == address(0) || to == address(this)) revert InvalidRecipient(to);
        _withdraw(token, to, amount);
    }

    /// @inheritdoc IVault
    function payout(address token, address to, uint256 amount) external nonReentrant {
        // The ledgers emit the withdrawal event; a second one here would only cost gas.
        if (msg.sender != address(hostEarnings) && msg.sender != address(treasury)) revert OnlyLedger();
        _send(token, to, amount);
    }

    // --------------------------------------------------------------- sessions

    /// @inheritdoc IJobMarketplace
    function createSession(
        address host,
        bytes32 modelId,
        address token,
        uint256 deposit,
        uint256 pricePerToken,
        uint256 duration,
        uint256 proofInterval,
        address sessionKey
    ) external whenNotPaused returns (uint256 sessionId) {
        uint256 escrow;
        (sessionId, escrow) = _open(host, modelId, token, deposit, pricePerToken, duration, proofInterval, sessionKey);
        Account storage a = _accounts[msg.sender][token];
        uint256 balance = a.balance;
        if (balance < escrow) revert InsufficientBalance(balance, escrow);
        (a.balance, a.escrowed) = (uint128(balance - escrow), SafeCast.toUint128(a.escrowed + escrow));
    }

    /// @inheritdoc IJobMarketplace
    function createSessionFromWallet(
        address host,
        bytes32 modelId,
        address token,
        uint256 deposit,
        uint256 pricePerToken,
        uint256 duration,
        uint256 proofInterval,
        address sessionKey
    ) external payable whenNotPaused nonReentrant returns (uint256 sessionId) {
        uint256 escrow;
        (sessionId, escrow) = _open(host, modelId, token, deposit, pricePerToken, duration, proofInterval, sessionKey);
        Account storage a = _accounts[msg.sender][token];
        uint256 balance = a.balance;
        uint256 missing;
        if (token == address(0)) {
            if (msg.value != 0) emit Deposited(msg.sender, token, msg.value);
            balance += msg.value;
            if (balance < escrow) revert InsufficientBalance(balance, escrow);
        } else {
            if (msg.value != 0) revert WrongEthValue(msg.value, 0);
            if (balance < escrow) {
                missing = escrow - balance;
                balance = escrow;
                emit Deposited(msg.sender, token, missing);
            }
        }
        uint256 escrowed = a.escrowed + escrow;
        // What was added must keep balance + escrow within 128 bits (see deposit).
        SafeCast.toUint128(balance - escrow + escrowed);
        (a.balance, a.escrowed) = (uint128(balance - escrow), uint128(escrowed));
        if (missing != 0) _pull(token, missing);
    }

    /// @inheritdoc IJobMarketplace
    function submitCheckpoint(uint256 sessionId, uint256 tokensUsed, bytes32 contentHash, bytes calldata signature)
        external
    {
        Session storage s = _sessions[sessionId];
        _requireRecorded(sessionId, s, tokensUsed, contentHash, signature);
    }

    /// @inheritdoc IJobMarketplace
    function settle(uint256 sessionId) external {
        Session storage s = _hostSession(sessionId);
        _settleOne(sessionId, s);
    }

    /// @inheritdoc IJobMarketplace
    function settleWithReceipt(uint256 sessionId, uint256 tokensUsed, bytes32 contentHash, bytes calldata signature)
        external
    {
        Session storage s = _hostSession(sessionId);
        // Anyone may copy this receipt into submitCheckpoint first: then it is recorded already.
        if (tokensUsed != s.tokensUsed) _requireRecorded(sessionId, s, tokensUsed, contentHash, signature);
        _settleOne(sessionId, s);
    }

    /// @inheritdoc IJobMarketplace
    function settleBatch(SettleItem[] calldata items) external returns (Outcome[] memory outcomes) {
        uint256 n = items.length;
        if (n == 0) revert EmptyBatch();
        if (n > MAX_BATCH) revert BatchTooLarge(n);
        outcomes = new Outcome[](n);

        // Credits are summed per run of equal tokens: one ledger write per token, not per session.
        address runToken;
        uint256 runHost;
        uint256 runFee;
        uint256 settled;
        uint256 tokensServed;
        for (uint256 i; i < n; ++i) {
            SettleItem calldata item = items[i];
            Session storage s = _sessions[item.sessionId];
            Outcome o = _statusOutcome(s.status);
            if (o == Outcome.Ok && s.host != msg.sender) o = Outcome.NotHost;
            // A receipt equal to the recorded one (e.g. copied into submitCheckpoint by
            // someone else first) settles as recorded, like tokensUsed 0.
            if (o == Outcome.Ok && item.tokensUsed != 0 && item.tokensUsed != s.tokensUsed) {
                o = _receiptOutcome(item.sessionId, s, item.tokensUsed, item.contentHash, item.signature);
                if (o == Outcome.Ok) _record(item.sessionId, s, item.tokensUsed, item.contentHash);
            }
            outcomes[i] = o;
            if (o != Outcome.Ok) {
                emit BatchItemSkipped(item.sessionId, o);
                continue;
            }
            (address token, uint256 hostAmount, uint256 fee, uint256 used) = _settle(item.sessionId, s);
            if (token != runToken && (runHost | runFee) != 0) {
                _creditLedgers(msg.sender, runToken, runHost, runFee);
                (runHost, runFee) = (0, 0);
            }
            runToken = token;
            runHost += hostAmount;
            runFee += fee;
            ++settled;
            tokensServed += used;
        }
        if ((runHost | runFee) != 0) _creditLedgers(msg.sender, runToken, runHost, runFee);
        if (settled != 0) _recordReputation(msg.sender, settled, tokensServed);
    }

    /// @inheritdoc IJobMarketplace
    function requestClose(uint256 sessionId) external {
        _requestClose(sessionId, _sessions[sessionId]);
    }

    /// @inheritdoc IJobMarketplace
    function requestCloseWithReceipt(
        uint256 sessionId,
        uint256 tokensUsed,
        bytes32 contentHash,
        bytes calldata signature
    ) external {
        Session storage s = _sessions[sessionId];
        // Already recorded (the host submitted the same receipt first): just close.
        if (tokensUsed != s.tokensUsed) _requireRecorded(sessionId, s, tokensUsed, contentHash, signature);
        _requestClose(sessionId, s);
    }

    /// @inheritdoc IJobMarketplace
    function finalize(uint256 sessionId) external {
        Session storage s = _sessions[sessionId];
        _requireOpen(sessionId, s.status);
        uint256 readyAt = uint256(s.endsAt) + settlementWindow;
        if (block.timestamp < readyAt) revert SettlementWindowOpen(readyAt);
        _settleOne(sessionId, s);
    }

    // ------------------------------------------------------------------ views

    /// @inheritdoc IJobMarketplace
    function getSession(uint256 sessionId) external view returns (SessionInfo memory info) {
        Session storage s = _sessions[sessionId];
        if (s.status == Status.None) revert UnknownSession(sessionId);
        info = SessionInfo({
            id: sessionId,
            depositor: s.depositor,
            host: s.host,
            sessionKey: s.sessionKey,
            token: _tokens[s.tokenIndex],
            modelId: modelRegistry.modelIdAt(s.modelIndex),
            pricePerToken: s.pricePerToken,
            deposit: uint256(s.maxTokens) * s.pricePerToken,
            maxTokens: s.maxTokens,
            tokensUsed: s.tokensUsed,
            endsAt: s.endsAt,
            finalizeAfter: uint256(s.endsAt) + settlementWindow,
            proofInterval: s.proofInterval,
            status: s.status
        });
    }

    /// @inheritdoc IJobMarketplace
    function remainingBudget(uint256 sessionId) external view returns (uint256 tokens, uint256 amount) {
        Session storage s = _sessions[sessionId];
        if (s.status == Status.None) revert UnknownSession(sessionId);
        if (s.status == Status.Settled) return (0, 0);
        tokens = s.maxTokens - s.tokensUsed;
        amount = tokens * s.pricePerToken;
    }

    /// @inheritdoc IJobMarketplace
    function checkReceipt(uint256 sessionId, uint256 tokensUsed, bytes32 contentHash, bytes calldata signature)
        external
        view
        returns (Outcome)
    {
        Session storage s = _sessions[sessionId];
        Outcome o = _statusOutcome(s.status);
        if (o != Outcome.Ok) return o;
        return _receiptOutcome(sessionId, s, tokensUsed, contentHash, signature);
    }

    /// @inheritdoc IJobMarketplace
    function sessionCount() external view returns (uint256) {
        return _sessionCount;
    }

    /// @inheritdoc IJobMarketplace
    function balanceOf(address user, address token) external view returns (uint256) {
        return _accounts[user][token].balance;
    }

    /// @inheritdoc IJobMarketplace
    function escrowedOf(address user, address token) external view returns (uint256) {
        return _accounts[user][token].escrowed;
    }

    /// @inheritdoc IJobMarketplace
    function tokenConfig(address token) external view returns (TokenConfig memory) {
        return _tokenConfig[token];
    }

    /// @inheritdoc IJobMarketplace
    function tokens() external view returns (address[] memory) {
        return _tokens;
    }

    /// @inheritdoc IJobMarketplace
    function domainSeparator() external view returns (bytes32) {
        return proofSystem.domainSeparator(address(this));
    }

    // --------------------------------------------------------------- internal

    function _configureToken(address token, bool accepted, uint96 minDeposit) private {
        TokenConfig storage c = _tokenConfig[token];
        uint8 index = c.index;
        bool known = (token == address(0)) ? _tokens.length != 0 : index != 0;
        if (!known) {
            if (_tokens.length == MAX_TOKENS) revert TooManyTokens();
            index = uint8(_tokens.length);
            _tokens.push(token);
        }
        (c.accepted, c.index, c.minDeposit) = (accepted, index, minDeposit);
        emit TokenConfigured(token, accepted, minDeposit, index);
    }

    function _open(
        address host,
        bytes32 modelId,
        address token,
        uint256 deposit,
        uint256 pricePerToken,
        uint256 duration,
        uint256 proofInterval,
        address sessionKey
    ) private returns (uint256 sessionId, uint256 escrow) {
        uint8 tokenIndex;
        (escrow, tokenIndex) = _escrowFor(token, deposit, pricePerToken, duration, proofInterval);
        uint32 modelIndex = _checkHost(host, modelId, token, pricePerToken);
        if (sessionKey == address(0)) sessionKey = msg.sender;
        // A host holding the session key could sign its own receipts.
        if (sessionKey == host) revert SessionKeyIsHost();
        uint256 endsAt = block.timestamp + duration;
        unchecked {
            sessionId = ++_sessionCount;
        }
        _sessions[sessionId] = Session({
            sessionKey: sessionKey,
            tokensUsed: 0,
            maxTokens: uint40(escrow / pricePerToken),
            status: Status.Active,
            tokenIndex: tokenIndex,
            depositor: msg.sender,
            pricePerToken: uint64(pricePerToken),
            modelIndex: modelIndex,
            host: host,
            endsAt: uint40(endsAt),
            proofInterval: uint24(proofInterval)
        });
        emit SessionCreated(
            sessionId, msg.sender, host, modelId, token, escrow, pricePerToken, endsAt, proofInterval, sessionKey
        );
    }

    /// @dev Validates the money terms; escrow is whole tokens' worth of the deposit.
    function _escrowFor(address token, uint256 deposit, uint256 pricePerToken, uint256 duration, uint256 proofInterval)
        private
        view
        returns (uint256 escrow, uint8 tokenIndex)
    {
        TokenConfig memory c = _tokenConfig[token];
        if (!c.accepted) revert TokenNotAccepted(token);
        if (pricePerToken == 0 || pricePerToken > type(uint64).max) revert InvalidPrice(pricePerToken);
        if (duration < MIN_DURATION || duration > maxDuration) revert InvalidDuration(duration);
        if (proofInterval == 0 || proofInterval > type(uint24).max) revert InvalidProofInterval(proofInterval);
        uint256 maxTokens = deposit / pricePerToken;
        if (maxTokens < proofInterval) revert DepositBelowProofInterval(maxTokens, proofInterval);
        if (maxTokens > type(uint40).max) revert DepositTooLarge(deposit);
        escrow = maxTokens * pricePerToken;
        if (escrow < c.minDeposit) revert DepositBelowMinimum(escrow, c.minDeposit);
        tokenIndex = c.index;
    }

    /// @dev The host must be active, serve the approved model, accept the token at this price.
    function _checkHost(address host, bytes32 modelId, address token, uint256 pricePerToken)
        private
        view
        returns (uint32 modelIndex)
    {
        if (host == msg.sender) revert SelfSession();
        (bool active, bool serves, bool approved, uint256 minPrice, uint32 index) =
            nodeRegistry.sessionTerms(host, modelId, token);
        if (!active) revert HostNotActive(host);
        if (!approved) revert ModelNotApproved(modelId);
        if (!serves) revert HostDoesNotServeModel(host, modelId);
        if (minPrice == 0) revert HostDoesNotAcceptToken(host, token);
        if (pricePerToken < minPrice) revert PriceBelowHostMinimum(pricePerToken, minPrice);
        return index;
    }

    function _hostSession(uint256 sessionId) private view returns (Session storage s) {
        s = _sessions[sessionId];
        _requireOpen(sessionId, s.status);
        if (s.host != msg.sender) revert NotSessionHost(msg.sender);
    }

    function _requireOpen(uint256 sessionId, Status status) private pure {
        if (status == Status.None) revert UnknownSession(sessionId);
        if (status == Status.Settled) revert SessionNotOpen(sessionId, status);
    }

    function _statusOutcome(Status status) private pure returns (Outcome) {
        if (status == Status.None) return Outcome.UnknownSession;
        if (status == Status.Settled) return Outcome.NotOpen;
        return Outcome.Ok;
    }

    /// @dev Checks a receipt against an open session without changing anything.
    function _receiptOutcome(
        uint256 sessionId,
        Session storage s,
        uint256 tokensUsed,
        bytes32 contentHash,
        bytes calldata signature
    ) private view returns (Outcome) {
        if (tokensUsed <= s.tokensUsed) return Outcome.StaleReceipt;
        if (tokensUsed > s.maxTokens) return Outcome.ExceedsDeposit;
        address signer =
            proofSystem.recoverCheckpointSigner(address(this), sessionId, tokensUsed, contentHash, signature);
        if (signer == address(0) || signer != s.sessionKey) return Outcome.BadSignature;
        return Outcome.Ok;
    }

    function _requireRecorded(
        uint256 sessionId,
        Session storage s,
        uint256 tokensUsed,
        bytes32 contentHash,
        bytes calldata signature
    ) private {
        _requireOpen(sessionId, s.status);
        Outcome o = _receiptOutcome(sessionId, s, tokensUsed, contentHash, signature);
        if (o == Outcome.StaleReceipt) revert StaleReceipt(tokensUsed, s.tokensUsed);
        if (o == Outcome.ExceedsDeposit) revert ExceedsDeposit(tokensUsed, s.maxTokens);
        if (o == Outcome.BadSignature) revert InvalidReceiptSigner(sessionId);
        _record(sessionId, s, tokensUsed, contentHash);
    }

    function _record(uint256 sessionId, Session storage s, uint256 tokensUsed, bytes32 contentHash) private {
        s.tokensUsed = uint40(tokensUsed);
        emit CheckpointSubmitted(sessionId, tokensUsed, contentHash);
    }

    function _requestClose(uint256 sessionId, Session storage s) private {
        Status status = s.status;
        _requireOpen(sessionId, status);
        if (status != Status.Active) revert SessionNotOpen(sessionId, status);
        if (msg.sender != s.depositor && msg.sender != s.sessionKey) revert NotSessionClient(msg.sender);
        s.status = Status.Closing;
        if (s.endsAt > block.timestamp) s.endsAt = uint40(block.timestamp);
        emit CloseRequested(sessionId, msg.sender, uint256(s.endsAt) + settlementWindow);
    }

    function _settleOne(uint256 sessionId, Session storage s) private {
        (address token, uint256 hostAmount, uint256 fee, uint256 used) = _settle(sessionId, s);
        address host = s.host;
        _creditLedgers(host, token, hostAmount, fee);
        _recordReputation(host, 1, used);
    }

    /// @dev Closes the books of one session: payment split, refund to the depositor's
    ///      balance. Exactly conserved: hostAmount + fee + refund == escrow.
    function _settle(uint256 sessionId, Session storage s)
        private
        returns (address token, uint256 hostAmount, uint256 fee, uint256 used)
    {
        used = s.tokensUsed;
        uint256 maxTokens = s.maxTokens;
        uint256 price = s.pricePerToken;
        token = _tokens[s.tokenIndex];
        s.status = Status.Settled;

        uint256 payment = used * price;
        fee = payment * feeBps / 10_000;
        hostAmount = payment - fee;
        uint256 refund = (maxTokens - used) * price;
        Account storage a = _accounts[s.depositor][token];
        // The escrow release is at most `escrowed` (checked subtraction). The refund fits 128
        // bits because deposits keep balance + escrowed within 128 bits and refund <= the
        // escrow released; the cast is checked anyway, as the books depend on it.
        (a.balance, a.escrowed) = (SafeCast.toUint128(a.balance + refund), uint128(a.escrowed - maxTokens * price));
        emit SessionSettled(sessionId, s.host, token, used, hostAmount, fee, refund);
    }

    function _creditLedgers(address host, address token, uint256 hostAmount, uint256 fee) private {
        if (hostAmount != 0) hostEarnings.credit(host, token, hostAmount);
        if (fee != 0) treasury.credit(token, fee);
    }

    /// @dev Reputation is informative: a registry that refuses must never block settlement.
    function _recordReputation(address host, uint256 sessions, uint256 used) private {
        try nodeRegistry.recordSettlement(host, sessions, used) {}
        catch {
            emit ReputationNotRecorded(host);
        }
    }

    function _withdraw(address token, address to, uint256 amount) private {
        if (amount == 0) revert ZeroAmount();
        Account storage a = _accounts[msg.sender][token];
        uint256 balance = a.balance;
        if (balance < amount) revert InsufficientBalance(balance, amount);
        a.balance = uint128(balance - amount);
        emit Withdrawn(msg.sender, token, amount, to);
        _send(token, to, amount);
    }

    /// @dev Pulls an ERC20 and refuses tokens that deliver less than asked (fee-on-transfer).
    function _pull(address token, uint256 amount) private {
        uint256 before = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = IERC20(token).balanceOf(address(this)) - before;
        if (received != amount) revert UnsupportedToken(token, amount, received);
    }

    function _send(address token, address to, uint256 amount) private {
        if (token == address(0)) {
            (bool ok,) = to.call{value: amount}("");
            if (!ok) revert EthTransferFailed(to, amount);
        } else {
            IERC20(token).safeTransfer(to, amount);
        }
    }
}
