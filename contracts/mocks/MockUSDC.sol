// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title MockUSDC
/// @notice 6-decimal stand-in for USDC on local chains only: anyone may mint.
contract MockUSDC is ERC20 {
    constructor() ERC20("Mock USD Coin", "USDC") {}

    /// @notice 6, like USDC.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Mint test tokens to `to` (local chains only; never deployed live).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
