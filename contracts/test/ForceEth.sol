// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title ForceEth
/// @notice TEST ONLY. Sends its ETH to `target` by selfdestruct, which no receiver can
///         refuse (the way anyone can donate ETH to the vault without calling it).
contract ForceEth {
    constructor(address payable target) payable {
        selfdestruct(target);
    }
}
