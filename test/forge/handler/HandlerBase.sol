// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Vm, VM_ADDRESS} from "../Vm.sol";
import {JobMarketplace} from "../../../contracts/JobMarketplace.sol";
import {HostEarnings} from "../../../contracts/HostEarnings.sol";
import {Treasury} from "../../../contracts/Treasury.sol";
import {ProofSystem} from "../../../contracts/ProofSystem.sol";
import {ModelRegistry} from "../../../contracts/ModelRegistry.sol";
import {NodeRegistry} from "../../../contracts/NodeRegistry.sol";
import {MockUSDC} from "../../../contracts/mocks/MockUSDC.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title HandlerBase
/// @notice What every part of the marketplace handler shares: the deployed contracts, the
///         limits read from them (never restated as literals), the actors (users, session
///         keys, hosts, admin, treasurer) and small helpers. It predicts nothing: the
///         reference model (ReferenceModel) and the actions (MarketplaceHandler) build on it.
abstract contract HandlerBase {
    Vm internal constant vm = Vm(VM_ADDRESS);

    uint256 public constant N_USERS = 4;
    uint256 public constant N_HOSTS = 3;
    uint256 public constant N_KEYS = 3;
    uint256 public constant N_TOKENS = 2; // index 0 = ETH, 1 = USDC

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
    uint256 public immutable maxBatch;
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

    uint256 public now_;

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

    constructor(Deployment memory d, address[N_HOSTS] memory hosts_, bytes32[3] memory modelIds_) {
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
        maxBatch = market_.MAX_BATCH();
        _hosts = hosts_;
        _modelIds = modelIds_;
        stake = d.nodes.minStake();
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

    // ================================================================ views for the invariants

    function users() external view returns (address[N_USERS] memory) {
        return _users;
    }

    function hosts() external view returns (address[N_HOSTS] memory) {
        return _hosts;
    }

    function tokenAt(uint256 ti) public view returns (address) {
        return ti == 0 ? address(0) : address(usdc);
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

    function _token(uint256 seed) internal view returns (address) {
        return tokenAt(seed % N_TOKENS);
    }

    function _walletOf(address who, address token) internal view returns (uint256) {
        return token == address(0) ? who.balance : usdc.balanceOf(who);
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
