// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title IModelRegistry
/// @notice What other contracts need from the curated model list.
interface IModelRegistry {
    /// @notice Whether `modelId` is approved and so may start new sessions.
    function isApproved(bytes32 modelId) external view returns (bool);

    /// @notice Approval and the compact index sessions store instead of the 32-byte id.
    function sessionModel(bytes32 modelId) external view returns (bool approved, uint32 index);

    /// @notice The model id stored at `index` (every model ever added keeps its index).
    function modelIdAt(uint32 index) external view returns (bytes32);
}
