// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ProxyAccount} from "./ProxyAccount.sol";

/// @title RevertingEthReceiver
/// @notice TEST ONLY. Refuses every ETH transfer while `refuse` is set.
contract RevertingEthReceiver is ProxyAccount {
    bool public refuse = true;

    error NoEthPlease();

    function setRefuse(bool refuse_) external {
        refuse = refuse_;
    }

    receive() external payable {
        if (refuse) revert NoEthPlease();
    }
}

/// @title ReentrantEthReceiver
/// @notice TEST ONLY. Once armed, calls `target` with `data` from inside its next receive(),
///         catches the result and records it (one shot).
contract ReentrantEthReceiver is ProxyAccount {
    address public target;
    bytes public data;
    bool public armed;
    bool public reentered;
    bool public lastSuccess;
    bytes public lastResult;

    function arm(address target_, bytes calldata data_) external {
        (target, data, armed) = (target_, data_, true);
    }

    receive() external payable {
        if (!armed) return;
        armed = false;
        (bool ok, bytes memory result) = target.call(data);
        (reentered, lastSuccess, lastResult) = (true, ok, result);
    }
}
