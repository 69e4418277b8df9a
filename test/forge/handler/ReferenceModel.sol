// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IJobMarketplace} from "../../../contracts/interfaces/IJobMarketplace.sol";
import {Vm} from "../Vm.sol";
import {HandlerBase} from "./HandlerBase.sol";

/// @title ReferenceModel
/// @notice The handler's model of the marketplace: ghost state (every session, every
///         host's registration and stake, the admin's settings, the totals the ledgers must
///         match) and the predictions made from it (whether a call must succeed, what a
///         receipt or a batch item must yield, what a settlement must pay). After every
///         action it compares the chain with the ghost; a difference is a violation.
abstract contract ReferenceModel is HandlerBase {
    modifier step(bytes32 name) {
        vm.warp(now_);
        delete _touched;
        ++count[name];
        _;
        _afterEveryAction();
    }

    uint256 private constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
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
            && t.proofInterval <= type(uint24).max && t.maxTokens >= t.proofInterval && t.maxTokens <= type(uint40).max
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
        Kind kind = roll < 12 ? Kind.Valid : (roll < 14 ? Kind.Stale : Kind(2 + (roll - 14) % 5)); // TooLarge..ShortSig
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

    /// @param d the deployment (read here directly: immutables of the base are not readable
    ///        while it is being constructed)
    constructor(
        Deployment memory d,
        address[N_HOSTS] memory hosts_,
        uint256[N_TOKENS][N_HOSTS] memory hostMinPrice_,
        bool[2][N_HOSTS] memory hostServes_
    ) {
        _hostMinPrice = hostMinPrice_;
        _hostServes = hostServes_;
        _hostActive = [true, true, true];
        _registered = [true, true, true];
        for (uint256 h; h < N_HOSTS; ++h) {
            _stake[h] = d.nodes.getHost(hosts_[h]).stake;
        }
        _minDeposit[0] = d.market.tokenConfig(address(0)).minDeposit;
        _minDeposit[1] = d.market.tokenConfig(address(d.usdc)).minDeposit;
    }
}
