// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title BlocklistToken
/// @notice TEST ONLY. An open-mint ERC20 that, like USDC, refuses transfers to or from a
///         blocklisted address (so a blocklisted user or host can only be paid elsewhere).
contract BlocklistToken is ERC20 {
    mapping(address account => bool) public blocked;

    error Blocklisted(address account);

    event BlockedSet(address indexed account, bool blocked);

    constructor() ERC20("Blocklist USD", "BUSD") {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function setBlocked(address account, bool blocked_) external {
        blocked[account] = blocked_;
        emit BlockedSet(account, blocked_);
    }

    function _update(address from, address to, uint256 value) internal override {
        if (blocked[from]) revert Blocklisted(from);
        if (blocked[to]) revert Blocklisted(to);
        super._update(from, to, value);
    }
}
