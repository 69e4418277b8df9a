// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title FABToken
/// @notice The staking token hosts lock in the NodeRegistry. Fixed supply, minted once.
contract FABToken is ERC20, ERC20Permit {
    /// @param holder receives the whole supply
    /// @param supply total supply in wei (18 decimals)
    constructor(address holder, uint256 supply) ERC20("Fabstir Token", "FAB") ERC20Permit("Fabstir Token") {
        _mint(holder, supply);
    }
}
