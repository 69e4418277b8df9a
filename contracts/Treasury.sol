// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {ITreasury, IVault} from "./interfaces/ILedgers.sol";
import {AmountTooLarge, InvalidRecipient, OnlyMarketplace, ZeroAddress, ZeroAmount} from "./Errors.sol";

/// @title Treasury
/// @notice Protocol fees owed to the treasury, per payment token. Credited by the
///         marketplace at settlement (bookkeeping only); a treasurer withdraws to an address.
contract Treasury is ITreasury, AccessControl, ReentrancyGuardTransient {
    /// @notice May withdraw fees.
    bytes32 public constant TREASURER_ROLE = keccak256("TREASURER_ROLE");

    /// @dev One slot per token: owed now, and collected in total.
    struct Account {
        uint128 balance;
        uint128 totalCollected;
    }

    /// @notice The marketplace vault: the only creditor and the payer on withdraw.
    address public immutable marketplace;

    mapping(address token => Account) private _accounts;

    error InsufficientFees(uint256 requested, uint256 available);

    event FeesCredited(address indexed token, uint256 amount);
    event FeesWithdrawn(address indexed token, address indexed to, uint256 amount, address indexed by);

    /// @param admin receives DEFAULT_ADMIN_ROLE (grants treasurers)
    /// @param marketplace_ the JobMarketplace (its address is known before it is deployed)
    constructor(address admin, address marketplace_) {
        if (admin == address(0) || marketplace_ == address(0)) revert ZeroAddress();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        marketplace = marketplace_;
    }

    /// @inheritdoc ITreasury
    function credit(address token, uint256 amount) external {
        if (msg.sender != marketplace) revert OnlyMarketplace();
        Account storage a = _accounts[token];
        uint256 balance = a.balance + amount;
        uint256 total = a.totalCollected + amount;
        if (total > type(uint128).max) revert AmountTooLarge();
        (a.balance, a.totalCollected) = (uint128(balance), uint128(total));
        emit FeesCredited(token, amount);
    }

    /// @notice Pay `amount` of accumulated `token` fees to `to`.
    function withdraw(address token, address to, uint256 amount) external onlyRole(TREASURER_ROLE) nonReentrant {
        if (to == address(0)) revert ZeroAddress();
        // Paid into the vault, the tokens would belong to nobody in its books.
        if (to == marketplace) revert InvalidRecipient(to);
        if (amount == 0) revert ZeroAmount();
        Account storage a = _accounts[token];
        uint256 available = a.balance;
        if (amount > available) revert InsufficientFees(amount, available);
        a.balance = uint128(available - amount);
        emit FeesWithdrawn(token, to, amount, msg.sender);
        IVault(marketplace).payout(token, to, amount);
    }

    /// @notice Fees owed to the treasury now in `token`.
    function balanceOf(address token) external view returns (uint256) {
        return _accounts[token].balance;
    }

    /// @notice Fees ever collected in `token`.
    function totalCollected(address token) external view returns (uint256) {
        return _accounts[token].totalCollected;
    }

    /// @notice The marketplace's fee in basis points (1000 = 10%).
    function feeBps() external view returns (uint16) {
        return IVault(marketplace).feeBps();
    }
}
