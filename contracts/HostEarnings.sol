// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IHostEarnings, IVault} from "./interfaces/ILedgers.sol";
import {AmountTooLarge, InvalidRecipient, OnlyMarketplace, ZeroAddress, ZeroAmount} from "./Errors.sol";

/// @title HostEarnings
/// @notice What each host is owed, per payment token. The marketplace credits it at
///         settlement (bookkeeping only: the tokens stay in the marketplace vault) and a
///         host withdraws its own balance whenever it likes.
contract HostEarnings is IHostEarnings, ReentrancyGuardTransient {
    /// @dev One slot per host and token: owed now, and earned in total.
    struct Account {
        uint128 balance;
        uint128 totalEarned;
    }

    /// @notice The marketplace vault: the only creditor and the payer on withdraw.
    address public immutable marketplace;

    mapping(address host => mapping(address token => Account)) private _accounts;

    error NothingToWithdraw(address token);
    error InsufficientEarnings(uint256 requested, uint256 available);

    event EarningsCredited(address indexed host, address indexed token, uint256 amount);
    event EarningsWithdrawn(address indexed host, address indexed token, uint256 amount, address to);

    /// @param marketplace_ the JobMarketplace (its address is known before it is deployed)
    constructor(address marketplace_) {
        if (marketplace_ == address(0)) revert ZeroAddress();
        marketplace = marketplace_;
    }

    /// @inheritdoc IHostEarnings
    function credit(address host, address token, uint256 amount) external {
        if (msg.sender != marketplace) revert OnlyMarketplace();
        Account storage a = _accounts[host][token];
        uint256 balance = a.balance + amount;
        uint256 total = a.totalEarned + amount;
        if (total > type(uint128).max) revert AmountTooLarge();
        (a.balance, a.totalEarned) = (uint128(balance), uint128(total));
        emit EarningsCredited(host, token, amount);
    }

    /// @notice Withdraw everything the caller is owed in `token` (address(0) = ETH).
    /// @return amount what was paid out
    function withdraw(address token) external nonReentrant returns (uint256 amount) {
        amount = _accounts[msg.sender][token].balance;
        if (amount == 0) revert NothingToWithdraw(token);
        _pay(token, msg.sender, amount);
    }

    /// @notice Withdraw `amount` of what the caller is owed in `token` to `to`: for a host
    ///         that cannot receive itself (a contract without `receive()`, an address the
    ///         token blocklists). `to` may not be zero or the marketplace vault.
    function withdrawTo(address token, address to, uint256 amount) external nonReentrant {
        // Paid into the vault, the tokens would belong to nobody in its books.
        if (to == address(0) || to == marketplace) revert InvalidRecipient(to);
        if (amount == 0) revert ZeroAmount();
        uint256 available = _accounts[msg.sender][token].balance;
        if (amount > available) revert InsufficientEarnings(amount, available);
        _pay(token, to, amount);
    }

    /// @notice Withdraw everything owed in each of `tokens`; tokens with nothing owed are skipped.
    /// @return amounts what was paid out, per token
    function withdrawMany(address[] calldata tokens) external nonReentrant returns (uint256[] memory amounts) {
        amounts = new uint256[](tokens.length);
        for (uint256 i; i < tokens.length; ++i) {
            uint256 amount = _accounts[msg.sender][tokens[i]].balance;
            if (amount == 0) continue;
            amounts[i] = amount;
            _pay(tokens[i], msg.sender, amount);
        }
    }

    /// @notice What `host` can withdraw now in `token`.
    function balanceOf(address host, address token) external view returns (uint256) {
        return _accounts[host][token].balance;
    }

    /// @notice Everything `host` has ever been credited in `token`.
    function totalEarned(address host, address token) external view returns (uint256) {
        return _accounts[host][token].totalEarned;
    }

    /// @dev Effects before the vault's external payout (CEI).
    function _pay(address token, address to, uint256 amount) private {
        Account storage a = _accounts[msg.sender][token];
        a.balance = uint128(a.balance - amount);
        emit EarningsWithdrawn(msg.sender, token, amount, to);
        IVault(marketplace).payout(token, to, amount);
    }
}
