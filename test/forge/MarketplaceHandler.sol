// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Vm, VM_ADDRESS} from "./Vm.sol";
import {JobMarketplace} from "../../contracts/JobMarketplace.sol";
import {IJobMarketplace} from "../../contracts/interfaces/IJobMarketplace.sol";
import {HostEarnings} from "../../contracts/HostEarnings.sol";
import {Treasury} from "../../contracts/Treasury.sol";
import {ProofSystem} from "../../contracts/ProofSystem.sol";
import {ModelRegistry} from "../../contracts/ModelRegistry.sol";
import {NodeRegistry} from "../../contracts/NodeRegistry.sol";
import {MockUSDC} from "../../contracts/mocks/MockUSDC.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title MarketplaceHandler
/// @notice The only target of the invariant campaign. Every external non-view function is
///         one random action of the marketplace's public surface, by one of several users,
///         session keys, hosts, the treasurer or the admin (forge pranks them). Inputs are
///         bounded to mostly-valid ranges; a share of every action is deliberately invalid
///         (stale, oversized or foreign receipts, wrong caller, too early, too little).
///
///         The handler predicts whether each call must succeed, mirrors the effect in ghost
///         state, and never reverts itself: a call that fails when it should succeed, or
///         succeeds when it must fail, or leaves the contract in a state other than the
///         predicted one, is counted in `violations` (with the first reason kept), which the
///         invariant suite checks. Reverts the handler predicts are swallowed.
contract MarketplaceHandler {
    Vm private constant vm = Vm(VM_ADDRESS);

    uint256 public constant N_USERS = 4;
    uint256 public constant N_HOSTS = 3;
    uint256 public constant N_KEYS = 3;
    uint256 public constant N_TOKENS = 2; // index 0 = ETH, 1 = USDC

    uint256 private constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    uint8 internal constant ACTIVE = 1;
    uint8 internal constant CLOSING = 2;
    uint8 internal constant SETTLED = 3;

    JobMarketplace public immutable market;
    HostEarnings public immutable earnings;
    Treasury public immutable treasury;
    ProofSystem public immutable proofs;
    ModelRegistry public immutable models;
    NodeRegistry public immutable nodes;
    IERC20 public immutable fab;
    uint256 public immutable stake;
    MockUSDC public immutable usdc;
    address public immutable admin;
    address public immutable treasurer;
    address public immutable feeSink;
    address public immutable stranger;
    uint256 public immutable window;
    uint256 public immutable feeBps;
    // Limits, read from the contracts (never restated here).
    uint256 public immutable maxDuration;
    uint256 public immutable minDuration;
    uint256 public immutable slashBps;
    uint256 internal constant U128 = type(uint128).max;

    address[N_USERS] internal _users;
    uint256[N_USERS] internal _userPks;
    address[N_HOSTS] internal _hosts;
    address[N_KEYS] internal _keys;
    uint256[N_KEYS] internal _keyPks;
    uint256 internal constant STRANGER_PK = 0xBAD5EED;

    /// @dev models[0] served by every host, [1] by hosts 0 and 1 (curator toggles it),
    ///      [2] added but never approved.
    bytes32[3] internal _modelIds;
    bool internal _model1Approved = true;
    /// @dev minimum price per host and token index (as registered in the NodeRegistry).
    uint256[N_TOKENS][N_HOSTS] internal _hostMinPrice;
    bool[2][N_HOSTS] internal _hostServes; // [host][model 0/1]
    bool[N_HOSTS] internal _hostActive; // registered and not unbonding
    bool[N_HOSTS] internal _registered; // active or unbonding (has a stake record)
    uint256[N_HOSTS] internal _stake;
    uint256[N_HOSTS] internal _unbondingEnds;
    /// @dev FAB burned by slashing (stays in the NodeRegistry).
    uint256 public slashedTotal;
    /// @dev withdrawStake succeeded while one of the host's sessions could still settle.
    uint256 public stakesLeftEarly;

    // Mirrors of admin state.
    bool public paused;
    bool[N_TOKENS] internal _accepted = [true, true];
    uint256[N_TOKENS] internal _minDeposit;

    uint256 public now_;

    struct Ghost {
        address depositor;
        address host;
        uint8 tokenIndex;
        uint8 status;
        address key;
        uint256 keyPk;
        uint256 price;
        uint256 maxTokens;
        uint256 escrow;
        uint256 endsAt;
        uint256 recorded; // tokensUsed the handler expects on chain
        uint256 lastSeen; // tokensUsed read back after the previous action
        uint256 checkpoints; // receipts accepted
        // set once, from the SessionSettled event of the call that settled it
        uint256 paidTokens;
        uint256 hostAmount;
        uint256 fee;
        uint256 refund;
    }

    /// @dev ids 1..sessionCount
    mapping(uint256 => Ghost) internal _g;
    uint256 public sessionCount;
    uint256[] internal _open;
    /// @dev sessions the current action named (re-checked after it with the open ones)
    uint256[] internal _touched;

    // Totals over settled sessions (per token index): deposits, and the sum of their parts.
    uint256[N_TOKENS] public settledDeposits;
    uint256[N_TOKENS] public settledParts;
    uint256 public sessionsSettled;
    uint256 public overpaid;
    // Totals the ledgers must match (per token index).
    uint256[N_TOKENS] public paidToHosts;
    uint256[N_TOKENS] public paidInFees;
    mapping(address host => uint256[N_TOKENS]) internal _hostPaid;

    // Violations of the handler's expectations (checked by invariant_marketplace).
    uint256 public violations;
    string public firstViolation;
    uint256 public tokensUsedDecreases;
    uint256 public badReceiptsAccepted;

    // What happened (for the coverage report in the test file).
    mapping(bytes32 => uint256) public count;

    /// @notice What setUp deployed.
    struct Deployment {
        JobMarketplace market;
        HostEarnings earnings;
        Treasury treasury;
        ProofSystem proofs;
        ModelRegistry models;
        NodeRegistry nodes;
        IERC20 fab;
        MockUSDC usdc;
        address admin;
        address treasurer;
    }

    constructor(
        Deployment memory d,
        address[N_HOSTS] memory hosts_,
        bytes32[3] memory modelIds_,
        uint256[N_TOKENS][N_HOSTS] memory hostMinPrice_,
        bool[2][N_HOSTS] memory hostServes_
    ) {
        JobMarketplace market_ = d.market;
        MockUSDC usdc_ = d.usdc;
        market = market_;
        earnings = d.earnings;
        treasury = d.treasury;
        proofs = d.proofs;
        models = d.models;
        nodes = d.nodes;
        fab = d.fab;
        usdc = usdc_;
        admin = d.admin;
        treasurer = d.treasurer;
        feeSink = address(0xFEE5);
        stranger = vm.addr(STRANGER_PK);
        window = market_.settlementWindow();
        feeBps = market_.feeBps();
        maxDuration = market_.maxDuration();
        minDuration = market_.MIN_DURATION();
        slashBps = d.nodes.maxSlashBps();
        _hosts = hosts_;
        _modelIds = modelIds_;
        _hostMinPrice = hostMinPrice_;
        _hostServes = hostServes_;
        _hostActive = [true, true, true];
        _registered = [true, true, true];
        stake = d.nodes.minStake();
        for (uint256 h; h < N_HOSTS; ++h) {
            _stake[h] = d.nodes.getHost(hosts_[h]).stake;
        }
        _minDeposit[0] = market_.tokenConfig(address(0)).minDeposit;
        _minDeposit[1] = market_.tokenConfig(address(usdc_)).minDeposit;
        for (uint256 i; i < N_USERS; ++i) {
            _userPks[i] = 0xA11CE0 + i;
            _users[i] = vm.addr(_userPks[i]);
            vm.label(_users[i], string.concat("user", _digit(i)));
            vm.deal(_users[i], 1_000_000 ether);
        }
        for (uint256 i; i < N_KEYS; ++i) {
            _keyPks[i] = 0x5E55100 + i;
            _keys[i] = vm.addr(_keyPks[i]);
            vm.label(_keys[i], string.concat("sessionKey", _digit(i)));
        }
        vm.label(stranger, "stranger");
        vm.label(feeSink, "feeSink");
        now_ = block.timestamp;
    }

    modifier step(bytes32 name) {
        vm.warp(now_);
        delete _touched;
        ++count[name];
        _;
        _afterEveryAction();
    }

    // ================================================================ balances

    function depositEth(uint256 userSeed, uint256 amount) external step("depositEth") {
        address u = _users[userSeed % N_USERS];
        amount = _bound(amount, 0, 50 ether);
        bool expected = amount != 0 && _accepted[0];
        uint256 before = market.balanceOf(u, address(0));
        vm.prank(u);
        try market.deposit{value: amount}(address(0), amount) {
            _check(expected, "depositEth succeeded unexpectedly");
            _check(market.balanceOf(u, address(0)) == before + amount, "depositEth: balance");
        } catch {
            _check(!expected, "depositEth reverted");
        }
    }

    function depositUsdc(uint256 userSeed, uint256 amount) external step("depositUsdc") {
        address u = _users[userSeed % N_USERS];
        // balance + escrow must stay within 128 bits (a refund lands in the balance)
        uint256 held = market.balanceOf(u, address(usdc)) + market.escrowedOf(u, address(usdc));
        uint256 room = U128 - held;
        uint256 mode = amount % 32;
        if (mode == 0) amount = room; // up to the limit exactly
        else if (mode == 1) amount = room + 1; // one past it
        else amount = _bound(amount >> 5, 0, 5_000e6);
        bool expected = amount != 0 && _accepted[1] && amount <= room;
        usdc.mint(u, amount);
        vm.prank(u);
        usdc.approve(address(market), amount);
        uint256 before = market.balanceOf(u, address(usdc));
        vm.prank(u);
        try market.deposit(address(usdc), amount) {
            _check(expected, "depositUsdc succeeded unexpectedly");
            _check(market.balanceOf(u, address(usdc)) == before + amount, "depositUsdc: balance");
        } catch {
            _check(!expected, "depositUsdc reverted");
        }
    }

    function _deposit(address u, uint256 ti, uint256 amount) internal {
        if (ti == 0) {
            vm.prank(u);
            market.deposit{value: amount}(address(0), amount);
        } else {
            usdc.mint(u, amount);
            vm.prank(u);
            usdc.approve(address(market), amount);
            vm.prank(u);
            market.deposit(address(usdc), amount);
        }
    }

    function withdraw(uint256 userSeed, uint256 tokenSeed, uint256 amount) external step("withdraw") {
        address u = _users[userSeed % N_USERS];
        address token = _token(tokenSeed);
        uint256 bal = market.balanceOf(u, token);
        // mostly within the balance, sometimes all of it, sometimes one unit too much
        uint256 mode = amount % 8;
        if (mode == 0) amount = bal + 1;
        else if (mode == 1) amount = bal;
        else amount = _bound(amount >> 3, 1, bal == 0 ? 1 : bal);
        bool expected = amount != 0 && amount <= bal;
        uint256 walletBefore = _walletOf(u, token);
        vm.prank(u);
        try market.withdraw(token, amount) {
            _check(expected, "withdraw succeeded unexpectedly");
            ++count["withdrawn"];
            _check(_walletOf(u, token) == walletBefore + amount, "withdraw: wallet");
            _check(market.balanceOf(u, token) == bal - amount, "withdraw: balance");
        } catch {
            _check(!expected, "withdraw reverted");
        }
    }

    // ================================================================ sessions

    struct Terms {
        address user;
        uint256 userIndex;
        uint256 hostIndex;
        address host;
        uint256 modelIndex;
        uint256 tokenIndex;
        address token;
        uint256 deposit;
        uint256 price;
        uint256 duration;
        uint256 proofInterval;
        address sessionKey; // as passed
        address key; // effective signer
        uint256 keyPk;
        uint256 maxTokens;
        uint256 escrow;
        bool valid; // every check but funds
    }

    function createSession(uint256 userSeed, uint256 seed) external step("createSession") {
        Terms memory t = _terms(userSeed, seed);
        uint256 bal = market.balanceOf(t.user, t.token);
        if (bal < t.escrow && _accepted[t.tokenIndex] && seed % 2 == 0 && t.escrow - bal <= _walletOf(t.user, t.token)) {
            // deposit what is missing first (most clients keep a balance; some do not)
            _deposit(t.user, t.tokenIndex, t.escrow - bal);
            bal = t.escrow;
        }
        bool expected = t.valid && bal >= t.escrow;
        uint256 escBefore = market.escrowedOf(t.user, t.token);
        vm.prank(t.user);
        try market.createSession(
            t.host, _modelIds[t.modelIndex], t.token, t.deposit, t.price, t.duration, t.proofInterval, t.sessionKey
        ) returns (uint256 id) {
            _check(expected, "createSession succeeded unexpectedly");
            _opened(id, t);
            _check(market.balanceOf(t.user, t.token) == bal - t.escrow, "createSession: balance");
            _check(market.escrowedOf(t.user, t.token) == escBefore + t.escrow, "createSession: escrow");
        } catch {
            _check(!expected, "createSession reverted");
        }
    }

    function createSessionFromWallet(uint256 userSeed, uint256 seed, uint256 extra)
        external
        step("createSessionFromWallet")
    {
        Terms memory t = _terms(userSeed, seed);
        uint256 bal = market.balanceOf(t.user, t.token);
        uint256 escBefore = market.escrowedOf(t.user, t.token);
        uint256 value;
        bool expected = t.valid;
        if (t.tokenIndex == 0) {
            // ETH: msg.value around what the balance lacks (sometimes short, sometimes over)
            uint256 missing = t.escrow > bal ? t.escrow - bal : 0;
            uint256 mode = extra % 6;
            if (mode == 0) value = 0;
            else if (mode == 1 && missing != 0) value = missing - 1;
            else value = missing + _bound(extra >> 8, 0, 1 ether);
            if (value > t.user.balance) value = t.user.balance; // a wallet holds what it holds
            expected = expected && bal + value >= t.escrow;
        } else {
            // ERC20: the wallet pays exactly what the balance lacks (approve it, plus some)
            uint256 missing = t.escrow > bal ? t.escrow - bal : 0;
            usdc.mint(t.user, missing);
            bool short = missing != 0 && extra % 13 == 5; // allowance one unit short: refused
            vm.prank(t.user);
            usdc.approve(address(market), short ? missing - 1 : missing + (extra % 3));
            if (extra % 11 == 0) value = 1; // ETH sent with an ERC20 session: refused
            expected = expected && value == 0 && !short;
        }
        uint256 walletBefore = _walletOf(t.user, t.token);
        vm.prank(t.user);
        try market.createSessionFromWallet{value: value}(
            t.host, _modelIds[t.modelIndex], t.token, t.deposit, t.price, t.duration, t.proofInterval, t.sessionKey
        ) returns (uint256 id) {
            _check(expected, "createSessionFromWallet succeeded unexpectedly");
            ++count["openedFromWallet"];
            _opened(id, t);
            uint256 fromWallet = walletBefore - _walletOf(t.user, t.token);
            if (t.tokenIndex == 0) {
                _check(fromWallet == value, "fromWallet: ETH taken");
                _check(market.balanceOf(t.user, t.token) == bal + value - t.escrow, "fromWallet: ETH balance");
            } else {
                uint256 missing = t.escrow > bal ? t.escrow - bal : 0;
                _check(fromWallet == missing, "fromWallet: USDC pulled");
                _check(market.balanceOf(t.user, t.token) == bal + missing - t.escrow, "fromWallet: USDC balance");
            }
            _check(market.escrowedOf(t.user, t.token) == escBefore + t.escrow, "fromWallet: escrow");
        } catch {
            _check(!expected, "createSessionFromWallet reverted");
        }
    }

    // ================================================================ receipts

    enum Kind {
        Valid,
        Stale,
        TooLarge,
        WrongSigner,
        OtherSession,
        HighS,
        ShortSig
    }

    struct Receipt {
        uint256 id;
        uint256 tokensUsed;
        bytes32 contentHash;
        bytes sig;
        bool valid; // would be accepted on an open session
    }

    /// @notice 1..4 receipts in a row for one session (a host posting as chunks arrive).
    function submitCheckpoint(uint256 sessionSeed, uint256 seed, uint256 callerSeed)
        external
        step("submitCheckpoint")
    {
        uint256 id = _pickSession(sessionSeed);
        if (id == 0) return;
        uint256 n = 1 + (seed >> 200) % 4;
        for (uint256 i; i < n; ++i) {
            _submitOne(id, uint256(keccak256(abi.encode(seed, i))), callerSeed);
        }
    }

    function _submitOne(uint256 id, uint256 seed, uint256 callerSeed) internal {
        Receipt memory r = _receipt(id, seed);
        bool expected = _isOpen(id) && r.valid;
        // anyone holding the receipt may submit it (normally the host)
        address caller = callerSeed % 3 == 0 ? _anyone(callerSeed >> 2) : _g[id].host;
        vm.prank(caller);
        try market.submitCheckpoint(id, r.tokensUsed, r.contentHash, r.sig) {
            _check(expected, "submitCheckpoint accepted a bad receipt");
            ++count["checkpointed"];
            if (!expected && _isOpen(id)) ++badReceiptsAccepted;
            _recorded(id, r.tokensUsed);
        } catch {
            _check(!expected, "submitCheckpoint rejected a good receipt");
        }
    }

    function settle(uint256 sessionSeed, uint256 callerSeed) external step("settle") {
        uint256 id = _pickSession(sessionSeed);
        if (id == 0) return;
        address caller = callerSeed % 6 == 0 ? _anyone(callerSeed >> 3) : _g[id].host;
        bool expected = _isOpen(id) && caller == _g[id].host;
        Snapshot memory before = _snapshot();
        vm.recordLogs();
        vm.getRecordedLogs();
        vm.prank(caller);
        try market.settle(id) {
            _check(expected, "settle succeeded unexpectedly");
            ++count["settledByHost"];
            _settled(before, 1);
        } catch {
            _check(!expected, "settle reverted");
        }
    }

    function settleWithReceipt(uint256 sessionSeed, uint256 seed, uint256 callerSeed)
        external
        step("settleWithReceipt")
    {
        uint256 id = _pickSession(sessionSeed);
        if (id == 0) return;
        Receipt memory r = _receipt(id, seed);
        address caller = callerSeed % 6 == 0 ? _anyone(callerSeed >> 3) : _g[id].host;
        // A receipt equal to the recorded count (e.g. copied into submitCheckpoint first by
        // someone else) counts as recorded: settlement goes through, whatever its signature.
        bool equal = r.tokensUsed == _g[id].recorded;
        bool expected = _isOpen(id) && caller == _g[id].host && (r.valid || equal);
        Snapshot memory before = _snapshot();
        vm.recordLogs();
        vm.getRecordedLogs();
        vm.prank(caller);
        try market.settleWithReceipt(id, r.tokensUsed, r.contentHash, r.sig) {
            _check(expected, "settleWithReceipt succeeded unexpectedly");
            ++count["settledWithReceipt"];
            if (!r.valid && !equal && _isOpen(id)) ++badReceiptsAccepted;
            if (equal) ++count["settledWithEqualReceipt"];
            else _recorded(id, r.tokensUsed);
            _settled(before, 1);
        } catch {
            _check(!expected, "settleWithReceipt reverted");
        }
    }

    /// @notice A batch of 1..8 items: the host's own sessions with and without fresh
    ///         receipts, mixed with bad items (other host's, unknown, settled, duplicates,
    ///         stale/oversized/forged receipts). Outcomes must match the prediction.
    function settleBatch(uint256 hostSeed, uint256 seed) external step("settleBatch") {
        address host = _hosts[hostSeed % N_HOSTS];
        uint256 n = 1 + seed % 8;
        IJobMarketplace.SettleItem[] memory items = new IJobMarketplace.SettleItem[](n);
        IJobMarketplace.Outcome[] memory expected = new IJobMarketplace.Outcome[](n);
        // The batch settles items in order: simulate that on a copy of the status.
        uint256[] memory settledInBatch = new uint256[](n);
        uint256 nOk;
        for (uint256 i; i < n; ++i) {
            uint256 s = uint256(keccak256(abi.encode(seed, i)));
            uint256 id = _batchPick(host, s);
            items[i].sessionId = id;
            if (id != 0 && id <= sessionCount) _touched.push(id);
            if (s % 3 == 0) {
                // settle as recorded
            } else {
                // (for an unknown id, some other session's receipt)
                Receipt memory r = _receipt(id == 0 || id > sessionCount ? 1 : id, s >> 8);
                items[i].tokensUsed = r.tokensUsed == 0 ? 1 : r.tokensUsed;
                items[i].contentHash = r.contentHash;
                items[i].signature = r.sig;
                // a receipt's validity was judged against the recorded count before the batch
            }
            expected[i] = _predictItem(host, items[i], settledInBatch, nOk);
            if (expected[i] == IJobMarketplace.Outcome.Ok) settledInBatch[nOk++] = id;
        }
        Snapshot memory before = _snapshot();
        vm.recordLogs();
        vm.getRecordedLogs();
        vm.prank(host);
        try market.settleBatch(items) returns (IJobMarketplace.Outcome[] memory outcomes) {
            _check(outcomes.length == n, "settleBatch: outcome count");
            for (uint256 i; i < n && i < outcomes.length; ++i) {
                if (outcomes[i] != expected[i]) {
                    _fail("settleBatch: outcome differs from prediction");
                    if (outcomes[i] == IJobMarketplace.Outcome.Ok) ++badReceiptsAccepted;
                }
                uint256 used = items[i].tokensUsed;
                if (outcomes[i] == IJobMarketplace.Outcome.Ok && used != 0 && used != _g[items[i].sessionId].recorded) {
                    _recorded(items[i].sessionId, used);
                }
            }
            uint256 got = _settled(before, nOk);
            _check(got == nOk, "settleBatch: settled count");
            if (nOk != 0) ++count["batchSettledSome"];
        } catch {
            _fail("settleBatch reverted");
        }
    }

    function requestClose(uint256 sessionSeed, uint256 callerSeed) external step("requestClose") {
        uint256 id = _pickSession(sessionSeed);
        if (id == 0) return;
        address caller = _clientOrOther(id, callerSeed);
        Ghost storage g = _g[id];
        bool expected = g.status == ACTIVE && (caller == g.depositor || caller == g.key);
        vm.prank(caller);
        try market.requestClose(id) {
            _check(expected, "requestClose succeeded unexpectedly");
            _closed(id);
        } catch {
            _check(!expected, "requestClose reverted");
        }
    }

    function requestCloseWithReceipt(uint256 sessionSeed, uint256 seed, uint256 callerSeed)
        external
        step("requestCloseWithReceipt")
    {
        uint256 id = _pickSession(sessionSeed);
        if (id == 0) return;
        Receipt memory r = _receipt(id, seed);
        address caller = _clientOrOther(id, callerSeed);
        Ghost storage g = _g[id];
        bool equal = r.tokensUsed == g.recorded; // already recorded: just close
        bool expected = g.status == ACTIVE && (caller == g.depositor || caller == g.key) && (r.valid || equal);
        vm.prank(caller);
        try market.requestCloseWithReceipt(id, r.tokensUsed, r.contentHash, r.sig) {
            _check(expected, "requestCloseWithReceipt succeeded unexpectedly");
            if (!r.valid && !equal && _isOpen(id)) ++badReceiptsAccepted;
            if (!equal) _recorded(id, r.tokensUsed);
            _closed(id);
        } catch {
            _check(!expected, "requestCloseWithReceipt reverted");
        }
    }

    function finalize(uint256 sessionSeed, uint256 callerSeed) external step("finalize") {
        uint256 id = _pickSession(sessionSeed);
        if (id == 0) return;
        bool expected = _isOpen(id) && now_ >= _g[id].endsAt + window;
        Snapshot memory before = _snapshot();
        vm.recordLogs();
        vm.getRecordedLogs();
        vm.prank(_anyone(callerSeed));
        try market.finalize(id) {
            _check(expected, "finalize succeeded unexpectedly");
            ++count["finalized"];
            _settled(before, 1);
        } catch {
            _check(!expected, "finalize reverted");
        }
    }

    // ================================================================ ledgers

    function hostWithdraw(uint256 hostSeed, uint256 tokenSeed) external step("hostWithdraw") {
        address host = _hosts[hostSeed % N_HOSTS];
        address token = _token(tokenSeed);
        uint256 owed = earnings.balanceOf(host, token);
        uint256 walletBefore = _walletOf(host, token);
        vm.prank(host);
        try earnings.withdraw(token) returns (uint256 amount) {
            _check(owed != 0, "hostWithdraw of nothing succeeded");
            ++count["hostWithdrawn"];
            _check(amount == owed && _walletOf(host, token) == walletBefore + owed, "hostWithdraw: amount");
            _check(earnings.balanceOf(host, token) == 0, "hostWithdraw: balance left");
        } catch {
            _check(owed == 0, "hostWithdraw reverted");
        }
    }

    function hostWithdrawMany(uint256 hostSeed, uint256 seed) external step("hostWithdrawMany") {
        address host = _hosts[hostSeed % N_HOSTS];
        uint256 n = seed % 4; // 0..3 entries, duplicates allowed (the second pays nothing)
        address[] memory list = new address[](n);
        for (uint256 i; i < n; ++i) {
            list[i] = _token(seed >> (8 + i));
        }
        uint256[N_TOKENS] memory owed = [earnings.balanceOf(host, address(0)), earnings.balanceOf(host, address(usdc))];
        uint256[N_TOKENS] memory walletBefore = [_walletOf(host, address(0)), _walletOf(host, address(usdc))];
        vm.prank(host);
        try earnings.withdrawMany(list) returns (uint256[] memory amounts) {
            bool[N_TOKENS] memory listed;
            for (uint256 i; i < n; ++i) {
                uint256 ti = list[i] == address(0) ? 0 : 1;
                _check(amounts[i] == (listed[ti] ? 0 : owed[ti]), "withdrawMany: amount");
                listed[ti] = true;
            }
            for (uint256 ti; ti < N_TOKENS; ++ti) {
                address token = ti == 0 ? address(0) : address(usdc);
                uint256 paid = listed[ti] ? owed[ti] : 0;
                _check(_walletOf(host, token) == walletBefore[ti] + paid, "withdrawMany: wallet");
                _check(earnings.balanceOf(host, token) == owed[ti] - paid, "withdrawMany: balance");
            }
        } catch {
            _fail("withdrawMany reverted");
        }
    }

    function treasuryWithdraw(uint256 tokenSeed, uint256 amount, uint256 callerSeed)
        external
        step("treasuryWithdraw")
    {
        address token = _token(tokenSeed);
        uint256 owed = treasury.balanceOf(token);
        uint256 mode = amount % 6;
        if (mode == 0) amount = owed + 1;
        else if (mode == 1) amount = owed;
        else amount = _bound(amount >> 3, 1, owed == 0 ? 1 : owed);
        address caller = callerSeed % 8 == 0 ? _anyone(callerSeed >> 3) : treasurer;
        address to = _recipient(callerSeed >> 8);
        bool expected = caller == treasurer && amount != 0 && amount <= owed && _goodRecipient(to);
        uint256 sinkBefore = _walletOf(to, token);
        vm.prank(caller);
        try treasury.withdraw(token, to, amount) {
            _check(expected, "treasuryWithdraw succeeded unexpectedly");
            ++count["treasuryWithdrawn"];
            _check(_walletOf(to, token) == sinkBefore + amount, "treasuryWithdraw: paid");
            _check(treasury.balanceOf(token) == owed - amount, "treasuryWithdraw: balance");
        } catch {
            _check(!expected, "treasuryWithdraw reverted");
        }
    }

    /// @notice A user takes part of its balance out to another address (zero and the vault
    ///         itself are refused).
    function withdrawTo(uint256 userSeed, uint256 tokenSeed, uint256 amount, uint256 toSeed)
        external
        step("withdrawTo")
    {
        address u = _users[userSeed % N_USERS];
        address token = _token(tokenSeed);
        address to = _recipient(toSeed);
        uint256 bal = market.balanceOf(u, token);
        uint256 mode = amount % 8;
        if (mode == 0) amount = bal + 1;
        else if (mode == 1) amount = bal;
        else amount = _bound(amount >> 3, 1, bal == 0 ? 1 : bal);
        bool expected = amount != 0 && amount <= bal && _goodRecipient(to);
        uint256 walletBefore = _walletOf(to, token);
        vm.prank(u);
        try market.withdrawTo(token, to, amount) {
            _check(expected, "withdrawTo succeeded unexpectedly");
            ++count["withdrawnTo"];
            _check(_walletOf(to, token) == walletBefore + amount, "withdrawTo: paid");
            _check(market.balanceOf(u, token) == bal - amount, "withdrawTo: balance");
        } catch {
            _check(!expected, "withdrawTo reverted");
        }
    }

    /// @notice A host takes part of its earnings out to another address.
    function hostWithdrawTo(uint256 hostSeed, uint256 tokenSeed, uint256 amount, uint256 toSeed)
        external
        step("hostWithdrawTo")
    {
        address host = _hosts[hostSeed % N_HOSTS];
        address token = _token(tokenSeed);
        address to = _recipient(toSeed);
        uint256 owed = earnings.balanceOf(host, token);
        uint256 mode = amount % 8;
        if (mode == 0) amount = owed + 1;
        else if (mode == 1) amount = owed;
        else if (mode == 2) amount = 0;
        else amount = _bound(amount >> 3, 1, owed == 0 ? 1 : owed);
        bool expected = amount != 0 && amount <= owed && to != address(0) && to != address(market);
        uint256 walletBefore = _walletOf(to, token);
        vm.prank(host);
        try earnings.withdrawTo(token, to, amount) {
            _check(expected, "hostWithdrawTo succeeded unexpectedly");
            ++count["hostWithdrawnTo"];
            _check(_walletOf(to, token) == walletBefore + amount, "hostWithdrawTo: paid");
            _check(earnings.balanceOf(host, token) == owed - amount, "hostWithdrawTo: balance");
        } catch {
            _check(!expected, "hostWithdrawTo reverted");
        }
    }

    // ================================================================ registry

    /// @notice The slasher burns part of a host's stake (active or unbonding): at most
    ///         maxSlashBps of it per slash. Below minStake the host takes no new sessions.
    function slash(uint256 hostSeed, uint256 amountSeed) external step("slash") {
        uint256 h = hostSeed % N_HOSTS;
        uint256 st = _stake[h];
        uint256 cap = st * slashBps / 10_000;
        uint256 mode = amountSeed % 8;
        uint256 amount;
        if (mode == 0) amount = cap + 1;
        else if (mode == 1) amount = cap;
        else if (mode == 2) amount = 0;
        else amount = _bound(amountSeed >> 3, 1, cap == 0 ? 1 : (cap > 1 ? cap / 2 : cap));
        bool expected = _registered[h] && amount != 0 && amount <= cap;
        vm.prank(admin); // the admin holds SLASHER_ROLE in this suite
        try nodes.slash(_hosts[h], amount, "fuzz") {
            _check(expected, "slash succeeded unexpectedly");
            _stake[h] = st - amount;
            slashedTotal += amount;
            ++count["slashed"];
        } catch {
            _check(!expected, "slash reverted");
        }
        _checkStake(h);
    }

    /// @notice An active host changes its registration: tops up its stake, reprices a token
    ///         (0 = stop accepting it), or changes the models it serves. Open sessions are
    ///         unaffected; new ones follow the new terms.
    function hostUpdate(uint256 hostSeed, uint256 seed) external step("hostUpdate") {
        uint256 h = hostSeed % N_HOSTS;
        address host = _hosts[h];
        uint256 mode = seed % 3;
        bool expected = _hostActive[h];
        if (mode == 0) {
            uint256 amount = seed % 7 == 0 ? 0 : _bound(seed >> 8, 1, 600e18);
            fab.transfer(host, amount);
            vm.prank(host);
            fab.approve(address(nodes), amount);
            vm.prank(host);
            try nodes.addStake(amount) {
                _check(expected && amount != 0, "addStake succeeded unexpectedly");
                _stake[h] += amount;
                ++count["stakeAdded"];
            } catch {
                _check(!expected || amount == 0, "addStake reverted");
            }
            _checkStake(h);
        } else if (mode == 1) {
            uint256 ti = (seed >> 8) % N_TOKENS;
            uint256 price = (seed >> 16) % 5 == 0 ? 0 : _bound(seed >> 24, 1, ti == 0 ? 3 gwei : 300);
            address[] memory tokens = new address[](1);
            tokens[0] = tokenAt(ti);
            uint256[] memory prices = new uint256[](1);
            prices[0] = price;
            vm.prank(host);
            try nodes.setMinPrices(tokens, prices) {
                _check(expected, "setMinPrices succeeded unexpectedly");
                _hostMinPrice[h][ti] = price;
                ++count["repriced"];
            } catch {
                _check(!expected, "setMinPrices reverted");
            }
        } else {
            bool withModel1 = (seed >> 8) % 2 == 0;
            bytes32[] memory served = new bytes32[](withModel1 ? 2 : 1);
            served[0] = _modelIds[0];
            if (withModel1) served[1] = _modelIds[1];
            vm.prank(host);
            try nodes.updateModels(served) {
                _check(expected && (!withModel1 || _model1Approved), "updateModels succeeded unexpectedly");
                _hostServes[h] = [true, withModel1];
                ++count["modelsUpdated"];
            } catch {
                _check(!expected || (withModel1 && !_model1Approved), "updateModels reverted");
            }
        }
    }

    // ================================================================ admin and time

    function togglePause(uint256 seed) external step("togglePause") {
        // pausing is rarer than unpausing, so new sessions are possible most of the time
        bool wantPause = seed % 6 == 0;
        vm.prank(seed % 10 == 9 ? stranger : admin);
        bool asAdmin = seed % 10 != 9;
        if (wantPause) {
            try market.pause() {
                _check(asAdmin && !paused, "pause succeeded unexpectedly");
                paused = true;
            } catch {
                _check(!asAdmin || paused, "pause reverted");
            }
        } else {
            try market.unpause() {
                _check(asAdmin && paused, "unpause succeeded unexpectedly");
                paused = false;
            } catch {
                _check(!asAdmin || !paused, "unpause reverted");
            }
        }
    }

    /// @notice Admin re-configures a token: mostly accepted, minimum deposit moves around.
    ///         Open sessions and balances must be unaffected.
    function configureToken(uint256 tokenSeed, uint256 seed) external step("configureToken") {
        uint256 ti = tokenSeed % N_TOKENS;
        address token = ti == 0 ? address(0) : address(usdc);
        bool accepted = seed % 10 != 0;
        uint96 minDeposit = ti == 0 ? uint96(_bound(seed >> 8, 0, 0.01 ether)) : uint96(_bound(seed >> 8, 0, 2e6));
        vm.prank(admin);
        market.configureToken(token, accepted, minDeposit);
        (_accepted[ti], _minDeposit[ti]) = (accepted, minDeposit);
    }

    /// @notice Curator deactivates or re-approves model 1: open sessions on it must finish.
    function toggleModel(uint256 seed) external step("toggleModel") {
        if (_model1Approved == (seed % 3 != 0)) return; // mostly approved
        vm.prank(admin);
        if (_model1Approved) models.deactivateModel(_modelIds[1]);
        else models.approveModel(_modelIds[1]);
        _model1Approved = !_model1Approved;
    }

    /// @notice A host leaves (unregister: no new sessions; its open sessions, earnings and
    ///         settlements must be unaffected) or, after unbonding, takes its stake back and
    ///         registers again (with model 1 only sometimes).
    function hostLeaveOrReturn(uint256 hostSeed, uint256 seed) external step("hostLeaveOrReturn") {
        uint256 h = hostSeed % N_HOSTS;
        address host = _hosts[h];
        if (_hostActive[h]) {
            if (seed % 8 != 0) return; // leaving is rare; coming back is not
            vm.prank(host);
            try nodes.unregister() {
                _hostActive[h] = false;
                _hostServes[h] = [false, false];
                _unbondingEnds[h] = now_ + nodes.unbondingPeriod();
                ++count["hostsLeft"];
            } catch {
                _fail("unregister reverted");
            }
            return;
        }
        bool over = now_ >= _unbondingEnds[h];
        uint256 walletBefore = fab.balanceOf(host);
        vm.prank(host);
        try nodes.withdrawStake() {
            _check(over, "withdrawStake before the unbonding period ended");
            _check(fab.balanceOf(host) == walletBefore + _stake[h], "withdrawStake: not the whole stake");
            // The stake must stay slashable while any session of the host can still settle
            // (before its settlement window ends nobody else can finalize it).
            for (uint256 i; i < _open.length; ++i) {
                Ghost storage g = _g[_open[i]];
                if (g.host == host && now_ < g.endsAt + window) {
                    ++stakesLeftEarly;
                    _fail("stake returned while a session of the host can still settle");
                }
            }
            (_registered[h], _stake[h]) = (false, 0);
        } catch {
            _check(!over, "withdrawStake reverted");
            return;
        }
        bool withModel1 = _model1Approved && seed % 4 != 0;
        bytes32[] memory served = new bytes32[](withModel1 ? 2 : 1);
        served[0] = _modelIds[0];
        if (withModel1) served[1] = _modelIds[1];
        address[] memory tokens = new address[](N_TOKENS);
        tokens[1] = address(usdc);
        uint256[] memory prices = new uint256[](N_TOKENS);
        (prices[0], prices[1]) = (_hostMinPrice[h][0], _hostMinPrice[h][1]);
        // Stakes differ between hosts and lives: a host gets back what it staked, not minStake.
        uint256 amount = stake + _bound(seed >> 8, 0, 500e18);
        uint256 have = fab.balanceOf(host);
        if (have < amount) fab.transfer(host, amount - have);
        vm.prank(host);
        fab.approve(address(nodes), amount);
        vm.prank(host);
        try nodes.register(amount, "wss://host.example", "{}", served, tokens, prices) {
            _hostActive[h] = true;
            _registered[h] = true;
            _stake[h] = amount;
            _hostServes[h] = [true, withModel1];
            ++count["hostsReturned"];
        } catch {
            _fail("re-register reverted");
        }
        _checkStake(h);
    }

    function warp(uint256 secondsSeed) external step("warp") {
        uint256 mode = secondsSeed % 10;
        uint256 dt;
        if (mode < 6) dt = _bound(secondsSeed >> 4, 1, 2 hours);
        else if (mode < 9) dt = _bound(secondsSeed >> 4, 1 hours, 3 days);
        else dt = _bound(secondsSeed >> 4, 3 days, 31 days);
        now_ += dt;
        vm.warp(now_);
    }

    // ================================================================ views for the invariants

    function users() external view returns (address[N_USERS] memory) {
        return _users;
    }

    function hosts() external view returns (address[N_HOSTS] memory) {
        return _hosts;
    }

    function ghost(uint256 id) external view returns (Ghost memory) {
        return _g[id];
    }

    function openSessions() external view returns (uint256[] memory) {
        return _open;
    }

    function hostPaid(address host, uint256 tokenIndex) external view returns (uint256) {
        return _hostPaid[host][tokenIndex];
    }

    /// @dev Everything the invariants compare with the chain, in one call.
    struct Totals {
        uint256[N_TOKENS] paidToHosts;
        uint256[N_TOKENS] paidInFees;
        uint256[N_TOKENS][N_HOSTS] hostPaid;
        uint256[N_TOKENS] settledParts;
        uint256[N_TOKENS] settledDeposits;
        uint256[N_TOKENS][N_USERS] openEscrow; // per user, from the handler's own arithmetic
        uint256 overpaid;
        uint256 tokensUsedDecreases;
        uint256 violations;
        uint256 badReceiptsAccepted;
    }

    function totals() external view returns (Totals memory t) {
        t.paidToHosts = paidToHosts;
        t.paidInFees = paidInFees;
        for (uint256 h; h < N_HOSTS; ++h) {
            t.hostPaid[h] = _hostPaid[_hosts[h]];
        }
        t.settledParts = settledParts;
        t.settledDeposits = settledDeposits;
        for (uint256 i; i < _open.length; ++i) {
            Ghost storage g = _g[_open[i]];
            t.openEscrow[_userIndex(g.depositor)][g.tokenIndex] += g.escrow;
        }
        t.overpaid = overpaid;
        t.tokensUsedDecreases = tokensUsedDecreases;
        t.violations = violations;
        t.badReceiptsAccepted = badReceiptsAccepted;
    }

    function tokenAt(uint256 ti) public view returns (address) {
        return ti == 0 ? address(0) : address(usdc);
    }

    // ================================================================ internals

    function _terms(uint256 userSeed, uint256 seed) internal view returns (Terms memory t) {
        t.userIndex = userSeed % N_USERS;
        t.user = _users[t.userIndex];
        t.hostIndex = _r(seed, 1) % N_HOSTS;
        t.host = _hosts[t.hostIndex];
        uint256 m = _r(seed, 2) % 32;
        t.modelIndex = m < 24 ? 0 : (m < 31 ? 1 : 2);
        t.tokenIndex = _r(seed, 3) % N_TOKENS;
        t.token = tokenAt(t.tokenIndex);
        _termsMoney(t, seed);
        _termsKey(t, seed);
        t.valid = _termsValid(t);
    }

    /// @dev Price, deposit, duration, proofInterval: mostly valid, sometimes just out of range.
    function _termsMoney(Terms memory t, uint256 seed) internal view {
        uint256 minPrice = _hostMinPrice[t.hostIndex][t.tokenIndex];
        uint256 base = minPrice == 0 ? 100 : minPrice; // 0: the host does not take this token
        uint256 pm = _r(seed, 4) % 40;
        if (pm == 0) t.price = 0;
        else if (pm == 1) t.price = base - 1;
        else if (pm == 2) t.price = base;
        else if (pm == 3) t.price = type(uint64).max; // the largest storable price
        else if (pm == 4) t.price = uint256(type(uint64).max) + 1;
        else t.price = _bound(_r(seed, 5), base, base * 20);
        uint256 minDep = _minDeposit[t.tokenIndex];
        uint256 dm = _r(seed, 6) % 32;
        if (dm == 0) t.deposit = minDep == 0 ? 0 : minDep - 1;
        else if (dm == 1) t.deposit = minDep;
        // the most tokens a session holds, and one more (ETH: only what the users' wallets hold)
        else if (dm < 4 && (t.tokenIndex == 1 || t.price <= 1e11)) t.deposit = t.price * (type(uint40).max + dm - 2);
        else if (t.price > 1e12) t.deposit = t.price * _bound(_r(seed, 7), 1, 1000);
        else t.deposit = _bound(_r(seed, 7), minDep, t.tokenIndex == 0 ? 2 ether : 2_000e6);
        uint256 du = _r(seed, 8) % 40;
        if (du == 0) t.duration = minDuration - 1;
        else if (du == 1) t.duration = maxDuration + 1;
        else if (du == 2) t.duration = minDuration;
        else if (du == 3) t.duration = maxDuration;
        else if (du < 8) t.duration = _bound(_r(seed, 9), minDuration, maxDuration);
        else t.duration = _bound(_r(seed, 9), minDuration, 12 hours);
        t.maxTokens = t.price == 0 ? 0 : t.deposit / t.price;
        t.escrow = t.maxTokens * t.price;
        uint256 pi = _r(seed, 10) % 40;
        uint256 cap = t.maxTokens < type(uint24).max ? t.maxTokens : type(uint24).max;
        if (pi == 0) t.proofInterval = 0;
        else if (pi == 1) t.proofInterval = t.maxTokens + 1; // more than the deposit covers
        else if (pi == 2) t.proofInterval = cap == 0 ? 1 : cap;
        else t.proofInterval = _bound(_r(seed, 11), 1, cap == 0 ? 1 : (cap > 1000 ? 1000 : cap));
    }

    /// @dev Session key: none (the depositor signs), the depositor named, or a throw-away key.
    function _termsKey(Terms memory t, uint256 seed) internal view {
        uint256 k = _r(seed, 12) % 4;
        if (k < 2) {
            t.sessionKey = k == 0 ? address(0) : t.user;
            t.key = t.user;
            t.keyPk = _userPks[t.userIndex];
        } else {
            uint256 ki = _r(seed, 13) % N_KEYS;
            t.sessionKey = _keys[ki];
            t.key = _keys[ki];
            t.keyPk = _keyPks[ki];
        }
    }

    /// @dev Every createSession check but the funds.
    function _termsValid(Terms memory t) internal view returns (bool) {
        bool modelOk = t.modelIndex == 0 || (t.modelIndex == 1 && _model1Approved);
        bool serves = t.modelIndex < 2 && _hostServes[t.hostIndex][t.modelIndex] && _hostActive[t.hostIndex]
            && _stake[t.hostIndex] >= stake;
        uint256 minPrice = _hostMinPrice[t.hostIndex][t.tokenIndex];
        bool money = t.price != 0 && t.price <= type(uint64).max && minPrice != 0 && t.price >= minPrice
            && t.duration >= minDuration && t.duration <= maxDuration && t.proofInterval != 0
            && t.proofInterval <= type(uint24).max
            && t.maxTokens >= t.proofInterval && t.maxTokens <= type(uint40).max
            && t.escrow >= _minDeposit[t.tokenIndex];
        return !paused && _accepted[t.tokenIndex] && money && modelOk && serves;
    }

    function _opened(uint256 id, Terms memory t) internal {
        _check(id == sessionCount + 1, "session ids not sequential");
        sessionCount = id;
        Ghost storage g = _g[id];
        g.depositor = t.user;
        g.host = t.host;
        g.tokenIndex = uint8(t.tokenIndex);
        g.status = ACTIVE;
        g.key = t.key;
        g.keyPk = t.keyPk;
        g.price = t.price;
        g.maxTokens = t.maxTokens;
        g.escrow = t.escrow;
        g.endsAt = now_ + t.duration;
        _open.push(id);
        ++count["sessionsOpened"];
    }

    /// @dev A receipt for session `id` of a random kind; `valid` judged against the ghost.
    function _receipt(uint256 id, uint256 seed) internal returns (Receipt memory r) {
        Ghost storage g = _g[id];
        r.id = id;
        uint256 roll = seed % 20;
        Kind kind = roll < 12
            ? Kind.Valid
            : (roll < 14 ? Kind.Stale : Kind(2 + (roll - 14) % 5)); // TooLarge..ShortSig
        uint256 rec = g.recorded;
        uint256 max = g.maxTokens;
        if (kind == Kind.Stale) {
            r.tokensUsed = _bound(seed >> 8, 0, rec);
        } else if (kind == Kind.TooLarge) {
            r.tokensUsed = max + 1 + (seed >> 8) % 3;
        } else if (rec >= max) {
            r.tokensUsed = max; // nothing left to sign for: stale
        } else if ((seed >> 8) % 8 == 0) {
            r.tokensUsed = max; // the whole deposit
        } else {
            uint256 stepMax = max - rec < 2000 ? max - rec : 2000;
            r.tokensUsed = rec + _bound(seed >> 16, 1, stepMax);
        }
        r.contentHash = keccak256(abi.encode("transcript", id, r.tokensUsed));
        uint256 pk = g.keyPk;
        uint256 signedId = id;
        if (kind == Kind.WrongSigner) pk = _otherPk(pk, seed >> 24);
        if (kind == Kind.OtherSession) signedId = id + 1 + (seed >> 24) % 5;
        bytes32 digest = proofs.checkpointDigest(address(market), signedId, r.tokensUsed, r.contentHash);
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(pk == 0 ? STRANGER_PK : pk, digest);
        if (kind == Kind.HighS) {
            // the same signature, malleated: must be refused
            s = bytes32(SECP256K1_N - uint256(s));
            v = v == 27 ? 28 : 27;
        }
        r.sig = abi.encodePacked(rr, s, v);
        if (kind == Kind.ShortSig) r.sig = abi.encodePacked(rr, s);
        r.valid = kind == Kind.Valid && pk != 0 && r.tokensUsed > rec && r.tokensUsed <= max;
        if (kind != Kind.Valid) ++count["badReceiptsTried"];
    }

    function _recorded(uint256 id, uint256 tokensUsed) internal {
        Ghost storage g = _g[id];
        if (tokensUsed > g.recorded) {
            g.recorded = tokensUsed;
            ++g.checkpoints;
            ++count["receiptsRecorded"];
        } else {
            _fail("a receipt that does not raise tokensUsed was recorded");
        }
    }

    function _closed(uint256 id) internal {
        Ghost storage g = _g[id];
        g.status = CLOSING;
        if (g.endsAt > now_) g.endsAt = now_;
        ++count["closeRequests"];
    }

    struct Snapshot {
        uint256[N_TOKENS][N_HOSTS] host;
        uint256[N_TOKENS] fees;
        uint256[N_TOKENS][N_USERS] balance;
        uint256[N_TOKENS][N_USERS] escrowed;
    }

    function _snapshot() internal view returns (Snapshot memory s) {
        for (uint256 ti; ti < N_TOKENS; ++ti) {
            address token = tokenAt(ti);
            s.fees[ti] = treasury.balanceOf(token);
            for (uint256 h; h < N_HOSTS; ++h) {
                s.host[h][ti] = earnings.balanceOf(_hosts[h], token);
            }
            for (uint256 u; u < N_USERS; ++u) {
                s.balance[u][ti] = market.balanceOf(_users[u], token);
                s.escrowed[u][ti] = market.escrowedOf(_users[u], token);
            }
        }
    }

    /// @dev Reads the SessionSettled events of the last call: marks each session settled
    ///      with its parts, and checks that the ledgers and balances moved by exactly those
    ///      parts. Returns how many sessions were settled.
    function _settled(Snapshot memory before, uint256 expectedCount) internal returns (uint256 n) {
        Vm.Log[] memory logs = vm.getRecordedLogs();
        Snapshot memory want = before; // (aliases `before`, which is not needed after this)
        for (uint256 i; i < logs.length; ++i) {
            Vm.Log memory l = logs[i];
            if (l.emitter != address(market) || l.topics[0] != IJobMarketplace.SessionSettled.selector) continue;
            ++n;
            uint256 id = uint256(l.topics[1]);
            (address token, uint256 used, uint256 hostAmount, uint256 fee, uint256 refund) =
                abi.decode(l.data, (address, uint256, uint256, uint256, uint256));
            Ghost storage g = _g[id];
            if (g.status == SETTLED || g.status == 0) {
                _fail("a session was settled twice (or never existed)");
                continue;
            }
            _check(tokenAt(g.tokenIndex) == token, "settled: token");
            _check(address(uint160(uint256(l.topics[2]))) == g.host, "settled: host");
            _check(used == g.recorded, "settled with a count other than the newest receipt");
            _check(hostAmount + fee == used * g.price, "settled: payment != tokensUsed * price");
            _check(fee == used * g.price * feeBps / 10_000, "settled: fee");
            _check(hostAmount + fee + refund == g.escrow, "settled: parts do not add up to the deposit");
            g.status = SETTLED;
            (g.paidTokens, g.hostAmount, g.fee, g.refund) = (used, hostAmount, fee, refund);
            if (hostAmount + fee > g.escrow || used > g.maxTokens) ++overpaid;
            settledDeposits[g.tokenIndex] += g.escrow;
            settledParts[g.tokenIndex] += hostAmount + fee + refund;
            ++sessionsSettled;
            paidToHosts[g.tokenIndex] += hostAmount;
            paidInFees[g.tokenIndex] += fee;
            _hostPaid[g.host][g.tokenIndex] += hostAmount;
            uint256 hi = _hostIndex(g.host);
            uint256 ui = _userIndex(g.depositor);
            want.host[hi][g.tokenIndex] += hostAmount;
            want.fees[g.tokenIndex] += fee;
            want.balance[ui][g.tokenIndex] += refund;
            if (want.escrowed[ui][g.tokenIndex] < g.escrow) _fail("settled: more escrow released than held");
            else want.escrowed[ui][g.tokenIndex] -= g.escrow;
            _removeOpen(id);
            ++count["sessionsSettled"];
        }
        _check(n == expectedCount, "settled: number of SessionSettled events");
        Snapshot memory got = _snapshot();
        for (uint256 ti; ti < N_TOKENS; ++ti) {
            _check(got.fees[ti] == want.fees[ti], "settled: treasury credit != fees of the settled sessions");
            for (uint256 h; h < N_HOSTS; ++h) {
                _check(got.host[h][ti] == want.host[h][ti], "settled: host credit != host parts");
            }
            for (uint256 u; u < N_USERS; ++u) {
                _check(got.balance[u][ti] == want.balance[u][ti], "settled: user balance != refunds");
                _check(got.escrowed[u][ti] == want.escrowed[u][ti], "settled: escrow not released exactly");
            }
        }
    }

    function _predictItem(
        address host,
        IJobMarketplace.SettleItem memory item,
        uint256[] memory settledInBatch,
        uint256 nOk
    ) internal view returns (IJobMarketplace.Outcome) {
        uint256 id = item.sessionId;
        if (id == 0 || id > sessionCount) return IJobMarketplace.Outcome.UnknownSession;
        if (_g[id].status == SETTLED) return IJobMarketplace.Outcome.NotOpen;
        for (uint256 j; j < nOk; ++j) {
            if (settledInBatch[j] == id) return IJobMarketplace.Outcome.NotOpen;
        }
        if (_g[id].host != host) return IJobMarketplace.Outcome.NotHost;
        // 0, or equal to the recorded count: settle as recorded
        if (item.tokensUsed == 0 || item.tokensUsed == _g[id].recorded) return IJobMarketplace.Outcome.Ok;
        return _predictReceipt(id, item);
    }

    function _predictReceipt(uint256 id, IJobMarketplace.SettleItem memory item)
        internal
        view
        returns (IJobMarketplace.Outcome)
    {
        Ghost storage g = _g[id];
        if (item.tokensUsed <= g.recorded) return IJobMarketplace.Outcome.StaleReceipt;
        if (item.tokensUsed > g.maxTokens) return IJobMarketplace.Outcome.ExceedsDeposit;
        // Signature: recompute what the session key would have signed.
        address signer = _recoverLowS(
            proofs.checkpointDigest(address(market), id, item.tokensUsed, item.contentHash), item.signature
        );
        if (signer == address(0) || signer != g.key) return IJobMarketplace.Outcome.BadSignature;
        return IJobMarketplace.Outcome.Ok;
    }

    /// @dev Independent re-implementation of a strict (65-byte, low-s, v 27/28) ecrecover.
    function _recoverLowS(bytes32 digest, bytes memory sig) internal pure returns (address) {
        if (sig.length != 65) return address(0);
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly ("memory-safe") {
            r := mload(add(sig, 32))
            s := mload(add(sig, 64))
            v := byte(0, mload(add(sig, 96)))
        }
        if (uint256(s) > SECP256K1_N / 2) return address(0);
        if (v != 27 && v != 28) return address(0);
        return ecrecover(digest, v, r, s);
    }

    /// @dev Mostly the host's own open sessions; sometimes another host's, a settled one,
    ///      an unknown id (0 or past the end).
    function _batchPick(address host, uint256 s) internal view returns (uint256) {
        uint256 mode = s % 10;
        if (mode == 0) return (s >> 8) % 2 == 0 ? 0 : sessionCount + 1 + (s >> 9) % 3;
        if (sessionCount == 0) return 1;
        if (mode < 7) {
            // one of this host's open sessions, if any
            uint256 n = _open.length;
            uint256 start = n == 0 ? 0 : (s >> 8) % n;
            for (uint256 k; k < n; ++k) {
                uint256 id = _open[(start + k) % n];
                if (_g[id].host == host) return id;
            }
        }
        return 1 + (s >> 16) % sessionCount;
    }

    function _pickSession(uint256 seed) internal returns (uint256 id) {
        if (sessionCount == 0) return 0;
        if (seed % 5 != 0 && _open.length != 0) id = _open[(seed >> 4) % _open.length];
        else id = 1 + (seed >> 4) % sessionCount;
        _touched.push(id);
    }

    function _isOpen(uint256 id) internal view returns (bool) {
        uint8 st = _g[id].status;
        return st == ACTIVE || st == CLOSING;
    }

    function _removeOpen(uint256 id) internal {
        uint256 n = _open.length;
        for (uint256 i; i < n; ++i) {
            if (_open[i] == id) {
                _open[i] = _open[n - 1];
                _open.pop();
                return;
            }
        }
        _fail("settled session was not open");
    }

    function _clientOrOther(uint256 id, uint256 seed) internal view returns (address) {
        uint256 m = seed % 8;
        if (m < 4) return _g[id].depositor;
        if (m < 6) return _g[id].key;
        if (m == 6) return _g[id].host;
        return _anyone(seed >> 3);
    }

    function _anyone(uint256 seed) internal view returns (address) {
        uint256 m = seed % (N_USERS + N_HOSTS + 1);
        if (m < N_USERS) return _users[m];
        if (m < N_USERS + N_HOSTS) return _hosts[m - N_USERS];
        return stranger;
    }

    function _otherPk(uint256 pk, uint256 seed) internal view returns (uint256) {
        uint256 m = seed % (N_USERS + N_KEYS + 1);
        uint256 other = m < N_USERS ? _userPks[m] : (m < N_USERS + N_KEYS ? _keyPks[m - N_USERS] : STRANGER_PK);
        return other == pk ? STRANGER_PK : other;
    }

    function _hostIndex(address host) internal view returns (uint256) {
        for (uint256 i; i < N_HOSTS; ++i) {
            if (_hosts[i] == host) return i;
        }
        revert("unknown host");
    }

    function _userIndex(address user) internal view returns (uint256) {
        for (uint256 i; i < N_USERS; ++i) {
            if (_users[i] == user) return i;
        }
        revert("unknown user");
    }

    /// @dev A withdrawal recipient: mostly a plain address, sometimes zero or the vault.
    function _recipient(uint256 seed) internal view returns (address) {
        uint256 k = seed % 8;
        if (k == 0) return address(0);
        if (k == 1) return address(market);
        if (k == 2) return stranger;
        return feeSink;
    }

    function _goodRecipient(address to) internal view returns (bool) {
        return to != address(0) && to != address(market);
    }

    /// @dev The registry's record of host `h` against the ghost: stake, and FAB held ==
    ///      every stake + everything burned by slashing.
    function _checkStake(uint256 h) internal {
        _check(nodes.getHost(_hosts[h]).stake == _stake[h], "stake differs from prediction");
        _check(nodes.totalSlashed() == slashedTotal, "totalSlashed differs");
        uint256 staked = slashedTotal;
        for (uint256 i; i < N_HOSTS; ++i) {
            staked += _stake[i];
        }
        _check(fab.balanceOf(address(nodes)) == staked, "registry FAB != stakes + slashed");
    }

    function _token(uint256 seed) internal view returns (address) {
        return tokenAt(seed % N_TOKENS);
    }

    function _walletOf(address who, address token) internal view returns (uint256) {
        return token == address(0) ? who.balance : usdc.balanceOf(who);
    }

    /// @dev After every action: each open session, and each session the action named, must
    ///      be on chain exactly what the ghost predicts, and tokensUsed must not have gone
    ///      down since the last look. (A settled session can change only through a call that
    ///      names it; afterInvariant sweeps all of them at the end of each run.)
    function _afterEveryAction() internal {
        for (uint256 i; i < _open.length; ++i) {
            _compare(_open[i]);
        }
        for (uint256 i; i < _touched.length; ++i) {
            _compare(_touched[i]);
        }
    }

    function _compare(uint256 id) internal {
        IJobMarketplace.SessionInfo memory s = market.getSession(id);
        Ghost storage g = _g[id];
        if (s.tokensUsed < g.lastSeen) {
            ++tokensUsedDecreases;
            _fail("tokensUsed decreased");
        }
        g.lastSeen = s.tokensUsed;
        _check(s.tokensUsed == g.recorded, "tokensUsed differs from the newest accepted receipt");
        _check(s.tokensUsed <= s.maxTokens, "tokensUsed above what the deposit covers");
        _check(uint8(s.status) == g.status, "status differs from prediction");
        _check(s.deposit == g.escrow && s.maxTokens == g.maxTokens, "deposit differs");
        _check(s.endsAt == g.endsAt, "endsAt differs");
        _check(s.depositor == g.depositor && s.host == g.host && s.sessionKey == g.key, "parties differ");
    }

    function _check(bool ok, string memory why) internal {
        if (!ok) _fail(why);
    }

    function _fail(string memory why) internal {
        if (violations == 0) firstViolation = why;
        ++violations;
    }

    function _r(uint256 seed, uint256 i) internal pure returns (uint256) {
        return uint256(keccak256(abi.encode(seed, i)));
    }

    function _bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        if (hi <= lo) return lo;
        return lo + x % (hi - lo + 1);
    }

    function _digit(uint256 i) internal pure returns (string memory) {
        return string(abi.encodePacked(bytes1(uint8(48 + i))));
    }
}
