// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title IHostEarnings
/// @notice Ledger of what hosts are owed; credited by the marketplace at settlement.
interface IHostEarnings {
    /// @notice The only contract allowed to credit.
    function marketplace() external view returns (address);

    /// @notice Credit `amount` of `token` to `host`. Marketplace only; moves no tokens.
    function credit(address host, address token, uint256 amount) external;
}

/// @title ITreasury
/// @notice Ledger of protocol fees; credited by the marketplace at settlement.
interface ITreasury {
    /// @notice The only contract allowed to credit.
    function marketplace() external view returns (address);

    /// @notice Credit `amount` of `token` in fees. Marketplace only; moves no tokens.
    function credit(address token, uint256 amount) external;
}

/// @title IVault
/// @notice The marketplace holds every token; the ledgers ask it to pay out what they owe.
interface IVault {
    /// @notice Pay `amount` of `token` to `to`. Callable only by the two ledgers.
    function payout(address token, address to, uint256 amount) external;

    /// @notice Fee on each settlement, in basis points.
    function feeBps() external view returns (uint16);
}
