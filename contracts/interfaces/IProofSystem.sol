// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title IProofSystem
/// @notice EIP-712 receipt verification, bound to chain id and marketplace address.
interface IProofSystem {
    /// @notice The EIP-712 domain separator receipts for `marketplace` on this chain use.
    function domainSeparator(address marketplace) external view returns (bytes32);

    /// @notice Signer of a Checkpoint receipt for `marketplace`, or address(0) if the
    ///         signature is malformed or malleable.
    function recoverCheckpointSigner(
        address marketplace,
        uint256 sessionId,
        uint256 tokensUsed,
        bytes32 contentHash,
        bytes calldata signature
    ) external view returns (address);
}
