// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title INodeRegistry
/// @notice What the marketplace needs from the host registry.
interface INodeRegistry {
    /// @notice Everything createSession checks about a host, in one call.
    /// @return hostActive the host is registered, not unbonding and staked at least minStake
    /// @return servesModel the host lists `modelId`
    /// @return modelApproved the model is approved in the ModelRegistry
    /// @return minPrice the host's minimum price per token in `token` (0: token not accepted)
    /// @return modelIndex the model's compact index in the ModelRegistry
    function sessionTerms(address host, bytes32 modelId, address token)
        external
        view
        returns (bool hostActive, bool servesModel, bool modelApproved, uint256 minPrice, uint32 modelIndex);

    /// @notice Reputation: a session of `host` settled with `tokens` served. Marketplace only.
    function recordSettlement(address host, uint256 sessions, uint256 tokens) external;

    /// @notice Seconds between a host's unregister and the earliest return of its stake.
    function unbondingPeriod() external view returns (uint256);

    /// @notice The model registry this node registry checks models against.
    function modelRegistry() external view returns (address);
}
