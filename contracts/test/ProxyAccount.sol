// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title ProxyAccount
/// @notice TEST ONLY. A contract account its deployer drives with `execute`, so an attack
///         contract can also be a depositor, a host or a ledger withdrawer in tests.
abstract contract ProxyAccount {
    address public immutable operator;

    error NotOperator();

    constructor() {
        operator = msg.sender;
    }

    /// @notice Call `target` with `value` and `data` as this contract; bubbles reverts.
    function execute(address target, uint256 value, bytes calldata data) external payable returns (bytes memory) {
        if (msg.sender != operator) revert NotOperator();
        (bool ok, bytes memory result) = target.call{value: value}(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(result, 32), mload(result))
            }
        }
        return result;
    }
}
