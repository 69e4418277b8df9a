// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title GasPriceOracleStandIn
/// @notice TEST ONLY. A stand-in for the OP-stack GasPriceOracle predeploy
/// (0x420000000000000000000000000000000000000F) that Base prices its L1 data fee
/// with. Base itself cannot be reached from the test machines, so the 84532
/// rehearsal anvil gets this code at the predeploy address (anvil_setCode).
/// Pre-Ecotone formula: (zero bytes * 4 + other bytes * 16 + overhead) * l1BaseFee * scalar / 1e6.
contract GasPriceOracleStandIn {
    uint256 public l1BaseFee;
    uint256 public constant overhead = 188;
    uint256 public constant scalar = 684_000;
    uint256 public constant decimals = 6;

    event L1BaseFeeSet(uint256 fee);

    /// @notice Set the L1 base fee the next estimates use (wei).
    function setL1BaseFee(uint256 fee) external {
        l1BaseFee = fee;
        emit L1BaseFeeSet(fee);
    }

    /// @notice The L1 data fee (wei) of a transaction whose RLP-encoded bytes are `data`.
    function getL1Fee(bytes calldata data) external view returns (uint256) {
        uint256 gas = overhead + 68 * 16; // the signature, which `data` does not carry yet
        for (uint256 i = 0; i < data.length; i++) {
            gas += data[i] == 0 ? 4 : 16;
        }
        return (gas * l1BaseFee * scalar) / 10 ** decimals;
    }
}
