// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ProxyAccount} from "./ProxyAccount.sol";

/// @title ReentrantToken
/// @notice TEST ONLY. An ERC20 that, once armed, calls `target` with `data` from inside
///         its next transfer or transferFrom (before the balances move), catches the
///         result and records it. Used to show the marketplace's reentrancy guard holds.
///         Through `execute` the token contract is also a marketplace user, so the
///         re-entrant call comes from an account that has a balance to steal.
contract ReentrantToken is ERC20, ProxyAccount {
    address public target;
    bytes public data;
    bool public armed;
    /// @notice Whether the re-entrant call succeeded, and what it returned or reverted with.
    bool public reentered;
    bool public lastSuccess;
    bytes public lastResult;

    constructor() ERC20("Reentrant Token", "REENT") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Re-enter `target_` with `data_` on the next transfer/transferFrom (one shot).
    function arm(address target_, bytes calldata data_) external {
        (target, data, armed) = (target_, data_, true);
    }

    function transfer(address to, uint256 value) public override returns (bool) {
        _hook();
        return super.transfer(to, value);
    }

    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        _hook();
        return super.transferFrom(from, to, value);
    }

    function _hook() private {
        if (!armed) return;
        armed = false;
        (bool ok, bytes memory result) = target.call(data);
        (reentered, lastSuccess, lastResult) = (true, ok, result);
    }
}
