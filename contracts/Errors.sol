// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

// Errors more than one contract raises, declared once. Each contract's own errors stay
// in its interface or its source.

/// @notice A required address argument was the zero address.
error ZeroAddress();

/// @notice A required amount was zero.
error ZeroAmount();

/// @notice `to` cannot receive a withdrawal (the zero address, or the vault itself, where
///         the tokens would belong to nobody in its books).
error InvalidRecipient(address to);

/// @notice Only the marketplace named at deploy may credit this ledger.
error OnlyMarketplace();

/// @notice A ledger amount would not fit its 128-bit field.
error AmountTooLarge();

/// @notice The model is not approved in the ModelRegistry.
error ModelNotApproved(bytes32 modelId);

/// @notice A metadata string is longer than the contract allows.
error MetadataTooLong(uint256 length);
