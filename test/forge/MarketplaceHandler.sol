// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IJobMarketplace} from "../../contracts/interfaces/IJobMarketplace.sol";
import {HandlerBase} from "./handler/HandlerBase.sol";
import {ReferenceModel} from "./handler/ReferenceModel.sol";

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
contract MarketplaceHandler is ReferenceModel {
    constructor(
        Deployment memory d,
        address[N_HOSTS] memory hosts_,
        bytes32[3] memory modelIds_,
        uint256[N_TOKENS][N_HOSTS] memory hostMinPrice_,
        bool[2][N_HOSTS] memory hostServes_
    ) HandlerBase(d, hosts_, modelIds_) ReferenceModel(d, hosts_, hostMinPrice_, hostServes_) {}

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

    function createSession(uint256 userSeed, uint256 seed) external step("createSession") {
        Terms memory t = _terms(userSeed, seed);
        uint256 bal = market.balanceOf(t.user, t.token);
        if (bal < t.escrow && _accepted[t.tokenIndex] && seed % 2 == 0 && t.escrow - bal <= _walletOf(t.user, t.token))
        {
            // deposit what is missing first (most clients keep a balance; some do not)
            _deposit(t.user, t.tokenIndex, t.escrow - bal);
            bal = t.escrow;
        }
        bool expected = t.valid && bal >= t.escrow;
        uint256 escBefore = market.escrowedOf(t.user, t.token);
        vm.prank(t.user);
        try market.createSession(
            t.host, _modelIds[t.modelIndex], t.token, t.deposit, t.price, t.duration, t.proofInterval, t.sessionKey
        ) returns (
            uint256 id
        ) {
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
        ) returns (
            uint256 id
        ) {
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

    /// @notice 1..4 receipts in a row for one session (a host posting as chunks arrive).
    function submitCheckpoint(uint256 sessionSeed, uint256 seed, uint256 callerSeed) external step("submitCheckpoint") {
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
        uint256 n = 1 + seed % (maxBatch < 8 ? maxBatch : 8);
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

    function treasuryWithdraw(uint256 tokenSeed, uint256 amount, uint256 callerSeed) external step("treasuryWithdraw") {
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
        else dt = _bound(secondsSeed >> 4, 3 days, maxDuration + window); // past any session
        now_ += dt;
        vm.warp(now_);
    }
}
