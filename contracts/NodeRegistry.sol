// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EnumerableSet} from "@openzeppelin/contracts/utils/structs/EnumerableSet.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {MetadataTooLong, ModelNotApproved, ZeroAddress, ZeroAmount} from "./Errors.sol";

/// @title NodeRegistry
/// @notice GPU hosts: FAB stake, endpoint, metadata, the models they serve and their
///         minimum price per payment token. Leaving takes two steps: `unregister` stops
///         new sessions at once, the stake comes back after an unbonding period during
///         which a slasher can still slash. The marketplace opens no session longer than
///         the unbonding period minus its settlement window, so a host's stake outlives
///         every session it could still be paid for.
contract NodeRegistry is AccessControl, ReentrancyGuardTransient, INodeRegistry {
    using SafeERC20 for IERC20;
    using EnumerableSet for EnumerableSet.AddressSet;

    /// @notice May slash a host's stake (active or unbonding), at most `maxSlashBps` of it
    ///         per slash; the slashed FAB is burned (see `slash`), never paid to anyone.
    bytes32 public constant SLASHER_ROLE = keccak256("SLASHER_ROLE");
    /// @notice The marketplace: the only caller that may bump reputation counters.
    bytes32 public constant MARKETPLACE_ROLE = keccak256("MARKETPLACE_ROLE");

    /// @notice Most models one host may list (bounds every loop over them).
    uint256 public constant MAX_MODELS_PER_HOST = 32;
    /// @notice Most payment tokens one host may price (bounds the clean-up on exit).
    uint256 public constant MAX_PRICED_TOKENS = 16;
    /// @notice Longest API URL (bytes).
    uint256 public constant MAX_URL_LENGTH = 512;
    /// @notice Longest metadata JSON (bytes).
    uint256 public constant MAX_METADATA_LENGTH = 4096;

    enum Status {
        None,
        Active,
        Unbonding
    }

    struct Host {
        uint128 stake;
        uint40 registeredAt;
        uint40 unbondingEndsAt;
        Status status;
        string apiUrl;
        string metadata;
    }

    /// @dev One slot, written only by the marketplace and by slashing.
    struct Reputation {
        uint64 sessionsSettled;
        uint160 tokensServed;
        uint32 slashes;
    }

    IERC20 public immutable fabToken;
    IModelRegistry private immutable _modelRegistry;
    uint256 public immutable minStake;
    /// @inheritdoc INodeRegistry
    uint256 public immutable unbondingPeriod;
    /// @notice Most of a host's current stake one slash may take, in basis points.
    uint16 public immutable maxSlashBps;

    /// @notice FAB slashed so far. It stays in this contract for good (no function moves
    ///         it): burned, so no role can slash a stake to its own benefit.
    uint256 public totalSlashed;

    mapping(address host => Host) private _hosts;
    mapping(address host => Reputation) private _reputation;
    mapping(address host => bytes32[]) private _hostModels;
    mapping(address host => mapping(bytes32 modelId => bool)) private _serves;
    mapping(address host => mapping(address token => uint256)) private _minPrice;
    /// @dev Tokens with a non-zero price, so that leaving clears them: a host that comes
    ///      back must not silently accept tokens at prices from its previous life.
    mapping(address host => address[]) private _pricedTokens;
    mapping(bytes32 modelId => EnumerableSet.AddressSet) private _modelHosts;
    EnumerableSet.AddressSet private _activeHosts;

    error AlreadyRegistered(address host);
    error NotRegistered(address host);
    error NotActive(address host);
    error NotUnbonding(address host);
    error StakeBelowMinimum(uint256 stake, uint256 minStake);
    error StakeTooLarge();
    error UnbondingNotOver(uint256 endsAt);
    error EmptyApiUrl();
    error ApiUrlTooLong(uint256 length);
    error NoModels();
    error TooManyModels(uint256 count);
    error DuplicateModel(bytes32 modelId);
    error LengthMismatch();
    error TooManyPricedTokens();
    error SlashAboveCap(uint256 amount, uint256 cap);
    error InvalidUnbondingPeriod(uint256 unbondingPeriod);
    error InvalidSlashCap(uint256 maxSlashBps);

    event HostRegistered(address indexed host, uint256 stake, string apiUrl, string metadata, bytes32[] models);
    event ModelsUpdated(address indexed host, bytes32[] models);
    event ApiUrlUpdated(address indexed host, string apiUrl);
    event MetadataUpdated(address indexed host, string metadata);
    event MinPriceSet(address indexed host, address indexed token, uint256 minPrice);
    event StakeAdded(address indexed host, uint256 amount, uint256 stake);
    event HostUnregistered(address indexed host, uint256 unbondingEndsAt);
    event StakeWithdrawn(address indexed host, uint256 amount);
    event HostSlashed(address indexed host, uint256 amount, uint256 remainingStake, string reason);
    event SettlementRecorded(address indexed host, uint256 sessions, uint256 tokens);

    /// @param admin receives DEFAULT_ADMIN_ROLE
    /// @param fab the staking token
    /// @param models the ModelRegistry hosts' models are checked against
    /// @param minStake_ least FAB a host must stake
    /// @param unbondingPeriod_ seconds between unregister and getting the stake back (> 0;
    ///        the marketplace further requires it to cover a session plus its settlement window)
    /// @param maxSlashBps_ most of the stake one slash may take, 1..10000 basis points
    constructor(
        address admin,
        IERC20 fab,
        IModelRegistry models,
        uint256 minStake_,
        uint256 unbondingPeriod_,
        uint16 maxSlashBps_
    ) {
        if (admin == address(0) || address(fab) == address(0) || address(models) == address(0)) {
            revert ZeroAddress();
        }
        if (minStake_ == 0) revert ZeroAmount();
        if (unbondingPeriod_ == 0) revert InvalidUnbondingPeriod(unbondingPeriod_);
        if (maxSlashBps_ == 0 || maxSlashBps_ > 10_000) revert InvalidSlashCap(maxSlashBps_);
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        fabToken = fab;
        _modelRegistry = models;
        minStake = minStake_;
        unbondingPeriod = unbondingPeriod_;
        maxSlashBps = maxSlashBps_;
    }

    // ------------------------------------------------------------- registration

    /// @notice Register as a host: stake FAB (approve it first), publish the endpoint,
    ///         the models served and a minimum price per accepted payment token.
    /// @param stake FAB to stake, at least `minStake`
    /// @param apiUrl WebSocket/HTTP endpoint of the host worker
    /// @param metadata JSON: hardware, capabilities, location, maxConcurrent
    /// @param models approved model ids, no duplicates
    /// @param tokens payment tokens accepted (address(0) = ETH)
    /// @param minPrices minimum price per generated token, in each token's smallest unit
    function register(
        uint256 stake,
        string calldata apiUrl,
        string calldata metadata,
        bytes32[] calldata models,
        address[] calldata tokens,
        uint256[] calldata minPrices
    ) external nonReentrant {
        Host storage h = _hosts[msg.sender];
        if (h.status != Status.None) revert AlreadyRegistered(msg.sender);
        if (stake < minStake) revert StakeBelowMinimum(stake, minStake);
        if (stake > type(uint128).max) revert StakeTooLarge();
        _checkUrl(apiUrl);
        _checkMetadata(metadata);

        h.stake = uint128(stake);
        h.registeredAt = uint40(block.timestamp);
        h.unbondingEndsAt = 0;
        h.status = Status.Active;
        h.apiUrl = apiUrl;
        h.metadata = metadata;
        _activeHosts.add(msg.sender);
        _setModels(msg.sender, models);
        _setPrices(msg.sender, tokens, minPrices);
        emit HostRegistered(msg.sender, stake, apiUrl, metadata, models);

        fabToken.safeTransferFrom(msg.sender, address(this), stake);
    }

    /// @notice Replace the list of models this host serves.
    function updateModels(bytes32[] calldata models) external {
        _active(msg.sender);
        _clearModels(msg.sender);
        _setModels(msg.sender, models);
        emit ModelsUpdated(msg.sender, models);
    }

    /// @notice Change the endpoint clients connect to.
    function updateApiUrl(string calldata apiUrl) external {
        Host storage h = _active(msg.sender);
        _checkUrl(apiUrl);
        h.apiUrl = apiUrl;
        emit ApiUrlUpdated(msg.sender, apiUrl);
    }

    /// @notice Change the host's metadata JSON.
    function updateMetadata(string calldata metadata) external {
        Host storage h = _active(msg.sender);
        _checkMetadata(metadata);
        h.metadata = metadata;
        emit MetadataUpdated(msg.sender, metadata);
    }

    /// @notice Set minimum prices per token; a price of 0 stops accepting that token.
    function setMinPrices(address[] calldata tokens, uint256[] calldata minPrices) external {
        _active(msg.sender);
        _setPrices(msg.sender, tokens, minPrices);
    }

    /// @notice Add FAB to the stake (approve it first).
    function addStake(uint256 amount) external nonReentrant {
        Host storage h = _active(msg.sender);
        if (amount == 0) revert ZeroAmount();
        uint256 newStake = h.stake + amount;
        if (newStake > type(uint128).max) revert StakeTooLarge();
        h.stake = uint128(newStake);
        emit StakeAdded(msg.sender, amount, newStake);
        fabToken.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Step one of leaving: stop taking new sessions now; the stake unbonds.
    function unregister() external {
        Host storage h = _active(msg.sender);
        uint256 endsAt = block.timestamp + unbondingPeriod;
        h.status = Status.Unbonding;
        h.unbondingEndsAt = uint40(endsAt);
        _activeHosts.remove(msg.sender);
        _clearModels(msg.sender);
        emit HostUnregistered(msg.sender, endsAt);
    }

    /// @notice Step two: after the unbonding period, take the (possibly slashed) stake back.
    ///         The host record is cleared, so the address may register again.
    function withdrawStake() external nonReentrant {
        Host storage h = _hosts[msg.sender];
        if (h.status != Status.Unbonding) revert NotUnbonding(msg.sender);
        if (block.timestamp < h.unbondingEndsAt) revert UnbondingNotOver(h.unbondingEndsAt);
        uint256 amount = h.stake;
        delete _hosts[msg.sender];
        _clearPrices(msg.sender);
        emit StakeWithdrawn(msg.sender, amount);
        if (amount != 0) fabToken.safeTransfer(msg.sender, amount);
    }

    // ------------------------------------------------------------------ slashing

    /// @notice Burn `amount` of a host's stake (active or unbonding), at most `maxSlashBps`
    ///         of the current stake. The FAB stays locked in this contract (`totalSlashed`).
    ///         An active host slashed below minStake stops taking sessions until it tops up
    ///         with addStake.
    function slash(address host, uint256 amount, string calldata reason) external onlyRole(SLASHER_ROLE) {
        Host storage h = _hosts[host];
        if (h.status == Status.None) revert NotRegistered(host);
        if (amount == 0) revert ZeroAmount();
        uint256 stake = h.stake;
        uint256 cap = stake * maxSlashBps / 10_000;
        if (amount > cap) revert SlashAboveCap(amount, cap);
        uint256 remaining = stake - amount;
        h.stake = uint128(remaining);
        totalSlashed += amount;
        ++_reputation[host].slashes;
        emit HostSlashed(host, amount, remaining, reason);
    }

    // ---------------------------------------------------------------- reputation

    /// @inheritdoc INodeRegistry
    function recordSettlement(address host, uint256 sessions, uint256 tokens) external onlyRole(MARKETPLACE_ROLE) {
        Reputation storage r = _reputation[host];
        r.sessionsSettled += uint64(sessions);
        r.tokensServed += uint160(tokens);
        emit SettlementRecorded(host, sessions, tokens);
    }

    // --------------------------------------------------------------------- views

    /// @inheritdoc INodeRegistry
    function sessionTerms(address host, bytes32 modelId, address token)
        external
        view
        returns (bool hostActive, bool servesModel, bool modelApproved, uint256 minPrice, uint32 modelIndex)
    {
        hostActive = isActive(host);
        servesModel = _serves[host][modelId];
        (modelApproved, modelIndex) = _modelRegistry.sessionModel(modelId);
        minPrice = _minPrice[host][token];
    }

    /// @inheritdoc INodeRegistry
    function modelRegistry() external view returns (address) {
        return address(_modelRegistry);
    }

    /// @notice Registered, not unbonding, and staked at least minStake.
    function isActive(address host) public view returns (bool) {
        Host storage h = _hosts[host];
        return h.status == Status.Active && h.stake >= minStake;
    }

    /// @notice Whether `host` is active and serves `modelId`, and the model is still approved.
    function hostServesModel(address host, bytes32 modelId) public view returns (bool) {
        return isActive(host) && _serves[host][modelId] && _modelRegistry.isApproved(modelId);
    }

    /// @notice A host's record; status None for an unknown address.
    function getHost(address host) external view returns (Host memory) {
        return _hosts[host];
    }

    /// @notice Models a host lists.
    function hostModels(address host) external view returns (bytes32[] memory) {
        return _hostModels[host];
    }

    /// @notice Payment tokens the host currently prices (accepts).
    function pricedTokens(address host) external view returns (address[] memory) {
        return _pricedTokens[host];
    }

    /// @notice Minimum price per token a host asks in `token` (0: not accepted).
    function minPriceOf(address host, address token) external view returns (uint256) {
        return _minPrice[host][token];
    }

    /// @notice Facts the chain knows about a host: sessions settled, tokens served, slashes.
    function reputationOf(address host) external view returns (Reputation memory) {
        return _reputation[host];
    }

    /// @notice Every registered host not unbonding (a slashed one below minStake included;
    ///         check isActive).
    function activeHosts() external view returns (address[] memory) {
        return _activeHosts.values();
    }

    /// @notice Active hosts that serve `modelId`; empty if the model is not approved.
    function hostsForModel(bytes32 modelId) external view returns (address[] memory hosts) {
        if (!_modelRegistry.isApproved(modelId)) return new address[](0);
        address[] memory all = _modelHosts[modelId].values();
        hosts = new address[](all.length);
        uint256 n;
        for (uint256 i; i < all.length; ++i) {
            if (isActive(all[i])) hosts[n++] = all[i];
        }
        assembly ("memory-safe") {
            mstore(hosts, n)
        }
    }

    // ------------------------------------------------------------------ internal

    function _active(address host) private view returns (Host storage h) {
        h = _hosts[host];
        if (h.status != Status.Active) revert NotActive(host);
    }

    function _setModels(address host, bytes32[] calldata models) private {
        uint256 n = models.length;
        if (n == 0) revert NoModels();
        if (n > MAX_MODELS_PER_HOST) revert TooManyModels(n);
        for (uint256 i; i < n; ++i) {
            bytes32 id = models[i];
            if (_serves[host][id]) revert DuplicateModel(id);
            if (!_modelRegistry.isApproved(id)) revert ModelNotApproved(id);
            _serves[host][id] = true;
            _hostModels[host].push(id);
            _modelHosts[id].add(host);
        }
    }

    function _clearModels(address host) private {
        bytes32[] storage list = _hostModels[host];
        for (uint256 i = list.length; i > 0; --i) {
            bytes32 id = list[i - 1];
            delete _serves[host][id];
            _modelHosts[id].remove(host);
            list.pop();
        }
    }

    function _setPrices(address host, address[] calldata tokens, uint256[] calldata minPrices) private {
        if (tokens.length != minPrices.length) revert LengthMismatch();
        for (uint256 i; i < tokens.length; ++i) {
            address token = tokens[i];
            uint256 price = minPrices[i];
            uint256 old = _minPrice[host][token];
            if (old == 0 && price != 0) {
                if (_pricedTokens[host].length == MAX_PRICED_TOKENS) revert TooManyPricedTokens();
                _pricedTokens[host].push(token);
            } else if (old != 0 && price == 0) {
                _removePricedToken(host, token);
            }
            _minPrice[host][token] = price;
            emit MinPriceSet(host, token, price);
        }
    }

    function _removePricedToken(address host, address token) private {
        address[] storage list = _pricedTokens[host];
        uint256 n = list.length;
        for (uint256 i; i < n; ++i) {
            if (list[i] == token) {
                list[i] = list[n - 1];
                list.pop();
                return;
            }
        }
    }

    function _clearPrices(address host) private {
        address[] storage list = _pricedTokens[host];
        for (uint256 i = list.length; i > 0; --i) {
            delete _minPrice[host][list[i - 1]];
            list.pop();
        }
    }

    function _checkUrl(string calldata apiUrl) private pure {
        uint256 len = bytes(apiUrl).length;
        if (len == 0) revert EmptyApiUrl();
        if (len > MAX_URL_LENGTH) revert ApiUrlTooLong(len);
    }

    function _checkMetadata(string calldata metadata) private pure {
        uint256 len = bytes(metadata).length;
        if (len > MAX_METADATA_LENGTH) revert MetadataTooLong(len);
    }
}
