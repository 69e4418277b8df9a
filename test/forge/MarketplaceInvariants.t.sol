// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Vm, VM_ADDRESS} from "./Vm.sol";
import {MarketplaceHandler} from "./MarketplaceHandler.sol";
import {HandlerBase} from "./handler/HandlerBase.sol";
import {ReferenceModel} from "./handler/ReferenceModel.sol";
import {JobMarketplace} from "../../contracts/JobMarketplace.sol";
import {IJobMarketplace} from "../../contracts/interfaces/IJobMarketplace.sol";
import {HostEarnings} from "../../contracts/HostEarnings.sol";
import {Treasury} from "../../contracts/Treasury.sol";
import {ProofSystem} from "../../contracts/ProofSystem.sol";
import {ModelRegistry} from "../../contracts/ModelRegistry.sol";
import {NodeRegistry} from "../../contracts/NodeRegistry.sol";
import {FABToken} from "../../contracts/FABToken.sol";
import {MockUSDC} from "../../contracts/mocks/MockUSDC.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IModelRegistry} from "../../contracts/interfaces/IModelRegistry.sol";
import {INodeRegistry} from "../../contracts/interfaces/INodeRegistry.sol";
import {IProofSystem} from "../../contracts/interfaces/IProofSystem.sol";
import {IHostEarnings, ITreasury} from "../../contracts/interfaces/ILedgers.sol";

/// @title MarketplaceInvariants
/// @notice forge invariant suite (DESIGN.md section 2, issue 3) over the real contracts.
///         forge calls random sequences of MarketplaceHandler actions (every public action
///         of JobMarketplace, HostEarnings and Treasury, by 4 users, 3 session keys, 3 hosts,
///         the treasurer and the admin) and checks each invariant_ after every call.
///         afterInvariant() then ends every run the hard way: it finalizes every open
///         session, withdraws everything for every party and requires the vault to be empty.
///
///         forge runs one campaign of runs x depth handler calls per invariant_ function
///         (same seed, so the same sequences, each checked against one invariant):
///         see foundry.toml for runs/depth and the closing note for the counts.
contract MarketplaceInvariants {
    Vm private constant vm = Vm(VM_ADDRESS);

    uint16 internal constant FEE_BPS = 1000;
    uint256 internal constant WINDOW = 1 hours;
    uint96 internal constant ETH_MIN_DEPOSIT = 0.001 ether;
    uint96 internal constant USDC_MIN_DEPOSIT = 1e6;

    JobMarketplace internal market;
    HostEarnings internal earnings;
    Treasury internal treasury;
    ProofSystem internal proofs;
    ModelRegistry internal models;
    NodeRegistry internal nodes;
    FABToken internal fab;
    MockUSDC internal usdc;
    MarketplaceHandler internal handler;
    address internal admin;
    address internal treasurer;
    address[4] internal users;
    address[3] internal hosts;

    error BooksDiffer(address token, uint256 held, uint256 owed);
    error EscrowDiffers(address user, address token, uint256 escrowed, uint256 openSessions);
    error SessionOverpaid(uint256 sessionId);
    error TokensUsedWentDown(uint256 sessionId, uint256 now_, uint256 before);
    error PartsDoNotAddUp(uint256 sessionId, uint256 hostAmount, uint256 fee, uint256 refund, uint256 deposit);
    error LedgerDiffers(address token, uint256 ledger, uint256 settled);
    error HandlerViolation(uint256 count, string first);
    error DrainFailed(string what);
    error VaultNotEmpty(address token, uint256 left);
    error StakeCanLeaveFirst(uint256 sessionId, address host, uint256 finalizeAfter, uint256 stakeFreeAt);

    function setUp() public {
        vm.warp(1_700_000_000);
        admin = vm.addr(0xAD311);
        treasurer = vm.addr(0x7EA5);
        vm.label(admin, "admin");
        vm.label(treasurer, "treasurer");

        fab = new FABToken(address(this), 1_000_000e18);
        usdc = new MockUSDC();
        models = new ModelRegistry(admin);
        vm.startPrank(admin);
        models.grantRole(models.CURATOR_ROLE(), admin);
        bytes32[3] memory modelIds;
        modelIds[0] = models.addModel("TheBloke/Llama-2-7B-GGUF", "llama-2-7b.Q4_K_M.gguf", keccak256("m0"), 1, "{}");
        modelIds[1] = models.addModel("CohereForAI/TinyVicuna-1B-32k-GGUF", "tiny-vicuna-1b.q4_k_m.gguf", keccak256("m1"), 1, "{}");
        modelIds[2] = models.addModel("unapproved/model", "never.gguf", keccak256("m2"), 1, "{}");
        models.approveModel(modelIds[0]);
        models.approveModel(modelIds[1]);
        vm.stopPrank();

        nodes = new NodeRegistry(admin, IERC20(address(fab)), IModelRegistry(address(models)), 1000e18, 7 days, 5000);
        proofs = new ProofSystem();
        // HostEarnings and Treasury name the marketplace, which checks them: deploy them
        // to its precomputed address (two creations from now).
        address predicted = vm.computeCreateAddress(address(this), vm.getNonce(address(this)) + 2);
        earnings = new HostEarnings(predicted);
        treasury = new Treasury(admin, predicted);
        market = new JobMarketplace(
            admin,
            INodeRegistry(address(nodes)),
            IProofSystem(address(proofs)),
            IHostEarnings(address(earnings)),
            ITreasury(address(treasury)),
            FEE_BPS,
            WINDOW,
            ETH_MIN_DEPOSIT
        );
        require(address(market) == predicted, "marketplace address prediction");

        vm.startPrank(admin);
        nodes.grantRole(nodes.MARKETPLACE_ROLE(), address(market));
        nodes.grantRole(nodes.SLASHER_ROLE(), admin);
        market.configureToken(address(usdc), true, USDC_MIN_DEPOSIT);
        treasury.grantRole(treasury.TREASURER_ROLE(), treasurer);
        vm.stopPrank();

        // Hosts: different minimum prices; host 2 serves model 0 only.
        address[3] memory hostAddrs;
        uint256[2][3] memory minPrice = [[uint256(1 gwei), 100], [uint256(2 gwei), 50], [uint256(0.5 gwei), 200]];
        bool[2][3] memory serves = [[true, true], [true, true], [true, false]];
        for (uint256 h; h < 3; ++h) {
            hostAddrs[h] = vm.addr(0x4057 + h);
            vm.label(hostAddrs[h], string.concat("host", string(abi.encodePacked(bytes1(uint8(48 + h))))));
            fab.transfer(hostAddrs[h], 1000e18);
            bytes32[] memory served = new bytes32[](serves[h][1] ? 2 : 1);
            served[0] = modelIds[0];
            if (serves[h][1]) served[1] = modelIds[1];
            address[] memory tokens = new address[](2);
            tokens[1] = address(usdc);
            uint256[] memory prices = new uint256[](2);
            (prices[0], prices[1]) = (minPrice[h][0], minPrice[h][1]);
            vm.startPrank(hostAddrs[h]);
            fab.approve(address(nodes), 1000e18);
            nodes.register(1000e18, "wss://host.example", "{}", served, tokens, prices);
            vm.stopPrank();
        }

        handler = new MarketplaceHandler(
            HandlerBase.Deployment({
                market: market,
                earnings: earnings,
                treasury: treasury,
                proofs: proofs,
                models: models,
                nodes: nodes,
                fab: IERC20(address(fab)),
                usdc: usdc,
                admin: admin,
                treasurer: treasurer
            }),
            hostAddrs,
            modelIds,
            minPrice,
            serves
        );
        users = handler.users();
        // FAB for the handler's hosts to top up and come back with more than minStake.
        fab.transfer(address(handler), 500_000e18);
        // USDC with a supply near 2^255: nothing may assume amounts stay small.
        usdc.mint(address(0xB16), type(uint256).max / 2);
        hosts = hostAddrs;
        vm.label(address(handler), "handler");
        vm.label(address(market), "market");
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    /// @notice Every handler action; forge picks uniformly from this list, so an action listed
    ///         k times is k times as likely (sessions are opened and receipts posted more often
    ///         than they are ended, so sessions live long enough to collect several receipts).
    function targetSelectors() public view returns (FuzzSelector[] memory targets) {
        MarketplaceHandler h = handler;
        bytes4[36] memory weighted = [
            h.createSession.selector,
            h.createSession.selector,
            h.createSession.selector,
            h.createSessionFromWallet.selector,
            h.createSessionFromWallet.selector,
            h.createSessionFromWallet.selector,
            h.submitCheckpoint.selector,
            h.submitCheckpoint.selector,
            h.submitCheckpoint.selector,
            h.submitCheckpoint.selector,
            h.settle.selector,
            h.settleWithReceipt.selector,
            h.settleBatch.selector,
            h.finalize.selector,
            h.finalize.selector,
            h.requestClose.selector,
            h.requestCloseWithReceipt.selector,
            h.depositEth.selector,
            h.depositUsdc.selector,
            h.withdraw.selector,
            h.hostWithdraw.selector,
            h.hostWithdrawMany.selector,
            h.treasuryWithdraw.selector,
            h.togglePause.selector,
            h.configureToken.selector,
            h.toggleModel.selector,
            h.hostLeaveOrReturn.selector,
            h.slash.selector,
            h.hostUpdate.selector,
            h.withdrawTo.selector,
            h.hostWithdrawTo.selector,
            h.depositUsdc.selector,
            h.warp.selector,
            h.warp.selector,
            h.warp.selector,
            h.withdraw.selector
        ];
        bytes4[] memory list = new bytes4[](weighted.length);
        for (uint256 i; i < weighted.length; ++i) {
            list[i] = weighted[i];
        }
        targets = new FuzzSelector[](1);
        targets[0] = FuzzSelector(address(h), list);
    }

    // ================================================================ invariants

    /// @dev The chain's books, read once per check: [token][party].
    struct Books {
        uint256[2] held; // token balance of the marketplace
        uint256[2][4] balance; // users' in-contract balances
        uint256[2][4] escrowed; // users' escrow
        uint256[2][3] earnings; // hosts' withdrawable earnings
        uint256[2][3] earned; // hosts' lifetime earnings
        uint256[2] fees; // treasury balance
        uint256[2] collected; // treasury lifetime fees
        uint256[2][4] openSessions; // sum of maxTokens * price over each user's open sessions
    }

    /// @notice Checked after every handler call. One invariant_ function on purpose: forge runs
    ///         a separate campaign per invariant_ function and, with one seed, every campaign
    ///         replays the same call sequences, so eight functions would cost eight times the
    ///         time for the same calls. Each property is its own _check function below with its
    ///         own custom error, so a failure names the property that broke.
    function invariant_marketplace() public view {
        Books memory b = _readBooks();
        ReferenceModel.Totals memory t = handler.totals();
        _checkHeldEqualsBooks(b);
        _checkEscrowEqualsOpenSessions(b, t);
        _checkNoSessionPaysMoreThanItsDeposit(t);
        _checkTokensUsedNeverDecreases(t);
        _checkSettledPartsAddUpToDeposit(t);
        _checkLedgersEqualSettledPayments(b, t);
        _checkHandlerPredictionsHold(t);
        _checkStakeOutlivesSessions();
    }

    /// @dev A host's stake stays slashable while it has a session that can still settle: for
    ///      every open session, the earliest time the host could have its stake back (now +
    ///      unbonding while active, the end of its unbonding while unbonding) is not before
    ///      the session's settlement window ends; a host that took its stake back has no
    ///      session whose window is still open.
    function _checkStakeOutlivesSessions() internal view {
        uint256[] memory open = handler.openSessions();
        uint256 now_ = handler.now_();
        uint256 unbonding = nodes.unbondingPeriod();
        for (uint256 i; i < open.length; ++i) {
            IJobMarketplace.SessionInfo memory s = market.getSession(open[i]);
            NodeRegistry.Host memory h = nodes.getHost(s.host);
            uint256 freeAt = now_;
            if (h.status == NodeRegistry.Status.Active) freeAt = now_ + unbonding;
            else if (h.status == NodeRegistry.Status.Unbonding) freeAt = h.unbondingEndsAt;
            if (freeAt < s.finalizeAfter && now_ < s.finalizeAfter) {
                revert StakeCanLeaveFirst(open[i], s.host, s.finalizeAfter, freeAt);
            }
        }
    }

    /// @dev For ETH and USDC: held by the vault == users' balances + escrow + host earnings + treasury.
    function _checkHeldEqualsBooks(Books memory b) internal view {
        for (uint256 ti; ti < 2; ++ti) {
            uint256 owed = b.fees[ti];
            for (uint256 u; u < 4; ++u) {
                owed += b.balance[u][ti] + b.escrowed[u][ti];
            }
            for (uint256 h; h < 3; ++h) {
                owed += b.earnings[h][ti];
            }
            if (b.held[ti] != owed) revert BooksDiffer(_tokenAt(ti), b.held[ti], owed);
        }
    }

    /// @dev Each user's escrow == sum of maxTokens * price over their open sessions, read from
    ///      the chain (getSession), and == the handler's own sum of the deposits it opened.
    function _checkEscrowEqualsOpenSessions(Books memory b, ReferenceModel.Totals memory t) internal view {
        for (uint256 ti; ti < 2; ++ti) {
            for (uint256 u; u < 4; ++u) {
                uint256 esc = b.escrowed[u][ti];
                if (esc != b.openSessions[u][ti]) revert EscrowDiffers(users[u], _tokenAt(ti), esc, b.openSessions[u][ti]);
                if (esc != t.openEscrow[u][ti]) revert EscrowDiffers(users[u], _tokenAt(ti), esc, t.openEscrow[u][ti]);
            }
        }
    }

    /// @dev No session records more tokens than its deposit covers, nor pays more than its
    ///      deposit. The handler compares every open or touched session with the chain after
    ///      every call (tokensUsed <= maxTokens, deposit == maxTokens * price) and every
    ///      settlement's parts with the deposit; _readBooks checks tokensUsed <= maxTokens on
    ///      every open session; afterInvariant re-checks every session of the run.
    function _checkNoSessionPaysMoreThanItsDeposit(ReferenceModel.Totals memory t) internal pure {
        if (t.overpaid != 0) revert SessionOverpaid(0);
    }

    /// @dev tokensUsed only grows: the handler reads every open or touched session after every
    ///      call and counts any value below the one it saw before (a value other than the
    ///      newest accepted receipt is a prediction violation).
    function _checkTokensUsedNeverDecreases(ReferenceModel.Totals memory t) internal pure {
        if (t.tokensUsedDecreases != 0) revert TokensUsedWentDown(0, 0, 0);
    }

    /// @dev Settled sessions' parts (hostAmount + fee + refund, from their SessionSettled
    ///      events) add up to their deposits, per token in total (each one was checked alone
    ///      when it settled; afterInvariant re-checks every one).
    function _checkSettledPartsAddUpToDeposit(ReferenceModel.Totals memory t) internal pure {
        for (uint256 ti; ti < 2; ++ti) {
            if (t.settledParts[ti] != t.settledDeposits[ti]) {
                revert PartsDoNotAddUp(0, t.settledParts[ti], 0, 0, t.settledDeposits[ti]);
            }
        }
    }

    /// @dev What the ledgers were ever credited == what settled sessions paid, per host and token.
    function _checkLedgersEqualSettledPayments(Books memory b, ReferenceModel.Totals memory t) internal view {
        for (uint256 ti; ti < 2; ++ti) {
            if (b.collected[ti] != t.paidInFees[ti]) revert LedgerDiffers(_tokenAt(ti), b.collected[ti], t.paidInFees[ti]);
            uint256 sum;
            for (uint256 h; h < 3; ++h) {
                if (b.earned[h][ti] != t.hostPaid[h][ti]) revert LedgerDiffers(_tokenAt(ti), b.earned[h][ti], t.hostPaid[h][ti]);
                sum += t.hostPaid[h][ti];
            }
            if (sum != t.paidToHosts[ti]) revert LedgerDiffers(_tokenAt(ti), sum, t.paidToHosts[ti]);
        }
    }

    /// @dev Every call did what the handler predicted: valid actions succeeded with the
    ///      predicted effect, invalid ones (bad receipts, wrong caller, too early, paused)
    ///      reverted, batch outcomes matched item by item, no session was settled twice.
    function _checkHandlerPredictionsHold(ReferenceModel.Totals memory t) internal view {
        if (t.violations != 0) revert HandlerViolation(t.violations, handler.firstViolation());
        if (t.badReceiptsAccepted != 0) revert HandlerViolation(0, "bad receipt accepted");
    }

    function _readBooks() internal view returns (Books memory b) {
        b.held[0] = address(market).balance;
        b.held[1] = usdc.balanceOf(address(market));
        for (uint256 ti; ti < 2; ++ti) {
            address token = _tokenAt(ti);
            b.fees[ti] = treasury.balanceOf(token);
            b.collected[ti] = treasury.totalCollected(token);
            for (uint256 u; u < 4; ++u) {
                b.balance[u][ti] = market.balanceOf(users[u], token);
                b.escrowed[u][ti] = market.escrowedOf(users[u], token);
            }
            for (uint256 h; h < 3; ++h) {
                b.earnings[h][ti] = earnings.balanceOf(hosts[h], token);
                b.earned[h][ti] = earnings.totalEarned(hosts[h], token);
            }
        }
        uint256[] memory open = handler.openSessions();
        for (uint256 i; i < open.length; ++i) {
            IJobMarketplace.SessionInfo memory s = market.getSession(open[i]);
            if (s.status == IJobMarketplace.Status.Settled) revert HandlerViolation(open[i], "open session is settled");
            if (s.tokensUsed > s.maxTokens) revert SessionOverpaid(open[i]);
            uint256 ti = s.token == address(0) ? 0 : 1;
            for (uint256 u; u < 4; ++u) {
                if (s.depositor == users[u]) b.openSessions[u][ti] += s.maxTokens * s.pricePerToken;
            }
        }
    }

    function _tokenAt(uint256 ti) internal view returns (address) {
        return ti == 0 ? address(0) : address(usdc);
    }

    /// @notice End of every run: every wei is withdrawable by exactly one party. Finalize
    ///         every open session after its window (while possibly paused), withdraw every
    ///         user, host and treasury balance; each party gets exactly its booked amount
    ///         and the vault ends holding 0 ETH and 0 USDC.
    function afterInvariant() public {
        uint256 n = market.sessionCount();
        _sweep(n);
        vm.warp(handler.now_() + market.MAX_DURATION() + market.settlementWindow());
        for (uint256 id = 1; id <= n; ++id) {
            if (market.getSession(id).status == IJobMarketplace.Status.Settled) continue;
            vm.prank(address(0xF1A1));
            try market.finalize(id) {}
            catch {
                revert DrainFailed("finalize after expiry + window");
            }
        }
        uint256[2] memory held = [address(market).balance, usdc.balanceOf(address(market))];
        uint256[2] memory paidOut;
        for (uint256 u; u < users.length; ++u) {
            for (uint256 ti; ti < 2; ++ti) {
                address token = handler.tokenAt(ti);
                if (market.escrowedOf(users[u], token) != 0) revert DrainFailed("escrow left after finalize");
                uint256 bal = market.balanceOf(users[u], token);
                if (bal == 0) continue;
                uint256 before = _wallet(users[u], token);
                vm.prank(users[u]);
                try market.withdraw(token, bal) {}
                catch {
                    revert DrainFailed("user withdraw");
                }
                if (_wallet(users[u], token) != before + bal) revert DrainFailed("user got other than its balance");
                paidOut[ti] += bal;
            }
        }
        address[] memory both = new address[](2);
        both[1] = address(usdc);
        for (uint256 h; h < hosts.length; ++h) {
            uint256[2] memory owed = [earnings.balanceOf(hosts[h], address(0)), earnings.balanceOf(hosts[h], address(usdc))];
            uint256[2] memory before = [hosts[h].balance, usdc.balanceOf(hosts[h])];
            vm.prank(hosts[h]);
            try earnings.withdrawMany(both) {}
            catch {
                revert DrainFailed("host withdrawMany");
            }
            for (uint256 ti; ti < 2; ++ti) {
                if (_wallet(hosts[h], handler.tokenAt(ti)) != before[ti] + owed[ti]) {
                    revert DrainFailed("host got other than its earnings");
                }
                paidOut[ti] += owed[ti];
            }
        }
        address sink = address(0x5111C);
        for (uint256 ti; ti < 2; ++ti) {
            address token = handler.tokenAt(ti);
            uint256 fees = treasury.balanceOf(token);
            if (fees == 0) continue;
            vm.prank(treasurer);
            try treasury.withdraw(token, sink, fees) {}
            catch {
                revert DrainFailed("treasury withdraw");
            }
            if (_wallet(sink, token) != fees) revert DrainFailed("treasury got other than its fees");
            paidOut[ti] += fees;
        }
        for (uint256 ti; ti < 2; ++ti) {
            if (paidOut[ti] != held[ti]) revert BooksDiffer(handler.tokenAt(ti), held[ti], paidOut[ti]);
        }
        if (address(market).balance != 0) revert VaultNotEmpty(address(0), address(market).balance);
        if (usdc.balanceOf(address(market)) != 0) revert VaultNotEmpty(address(usdc), usdc.balanceOf(address(market)));
    }

    // ================================================================ helpers

    /// @dev Every session ever opened, against the handler's ghost.
    function _sweep(uint256 n) internal view {
        if (n != handler.sessionCount()) revert HandlerViolation(n, "session count differs");
        for (uint256 id = 1; id <= n; ++id) {
            IJobMarketplace.SessionInfo memory s = market.getSession(id);
            ReferenceModel.Ghost memory g = handler.ghost(id);
            if (s.tokensUsed < g.lastSeen || s.tokensUsed != g.recorded) revert TokensUsedWentDown(id, s.tokensUsed, g.lastSeen);
            if (s.tokensUsed > s.maxTokens || s.deposit != g.escrow) revert SessionOverpaid(id);
            if (uint8(s.status) != g.status) revert HandlerViolation(id, "status differs");
            if (g.status != 3) continue;
            if (g.hostAmount + g.fee > g.escrow || g.paidTokens != s.tokensUsed) revert SessionOverpaid(id);
            if (g.hostAmount + g.fee + g.refund != g.escrow || g.hostAmount + g.fee != g.paidTokens * g.price) {
                revert PartsDoNotAddUp(id, g.hostAmount, g.fee, g.refund, g.escrow);
            }
        }
    }

    function _wallet(address who, address token) internal view returns (uint256) {
        return token == address(0) ? who.balance : usdc.balanceOf(who);
    }
}
