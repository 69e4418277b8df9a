// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title MockERC20
/// @notice A payment token for local chains only, deployed for each "mock" row of a
///         params file's token table: any symbol and decimals, anyone may mint.
contract MockERC20 is ERC20 {
    uint8 private immutable _decimals;

    /// @param name_ The token's name (e.g. "Mock USDC").
    /// @param symbol_ The symbol the token table lists (e.g. "USDC").
    /// @param decimals_ The decimals the token table lists (e.g. 6).
    constructor(string memory name_, string memory symbol_, uint8 decimals_) ERC20(name_, symbol_) {
        _decimals = decimals_;
    }

    /// @notice The decimals given at deploy.
    function decimals() public view override returns (uint8) {
        return _decimals;
    }

    /// @notice Mint test tokens to `to` (local chains only; never deployed live).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
