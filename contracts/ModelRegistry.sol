// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {EnumerableSet} from "@openzeppelin/contracts/utils/structs/EnumerableSet.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";
import {MetadataTooLong} from "./Errors.sol";

/// @title ModelRegistry
/// @notice Curated list of the models hosts may serve. A model's id is
///         keccak256(bytes(repo + "/" + file)), which reproduces the ids of the
///         original SDK. Curators add, approve and deactivate; a deactivated model
///         can start no new session.
contract ModelRegistry is AccessControl, IModelRegistry {
    using EnumerableSet for EnumerableSet.Bytes32Set;

    /// @notice May add, approve, deactivate and describe models.
    bytes32 public constant CURATOR_ROLE = keccak256("CURATOR_ROLE");

    /// @notice Longest metadata string accepted (bytes).
    uint256 public constant MAX_METADATA_LENGTH = 2048;
    /// @notice Longest repo or file name accepted (bytes).
    uint256 public constant MAX_NAME_LENGTH = 256;

    enum Status {
        None,
        Pending,
        Approved,
        Deactivated
    }

    struct Model {
        bytes32 sha256Hash;
        uint64 size;
        uint32 index;
        Status status;
        string repo;
        string file;
        string metadata;
    }

    mapping(bytes32 modelId => Model) private _models;
    bytes32[] private _ids;
    EnumerableSet.Bytes32Set private _approved;

    error InvalidRepo(string repo);
    error InvalidFile(string file);
    error InvalidHash();
    error InvalidSize();
    error ModelExists(bytes32 modelId);
    error UnknownModel(bytes32 modelId);
    error AlreadyApproved(bytes32 modelId);
    error NotApproved(bytes32 modelId);
    error UnknownIndex(uint32 index);

    event ModelAdded(bytes32 indexed modelId, string repo, string file, bytes32 sha256Hash, uint64 size, uint32 index);
    event ModelApproved(bytes32 indexed modelId);
    event ModelDeactivated(bytes32 indexed modelId);
    event ModelMetadataUpdated(bytes32 indexed modelId, string metadata);

    /// @param admin receives DEFAULT_ADMIN_ROLE (grants and revokes curators)
    constructor(address admin) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    // ------------------------------------------------------------------ curation

    /// @notice Add a model in the Pending state.
    /// @param repo Hugging Face style `owner/name`: exactly one "/", not at either end
    /// @param file file name inside the repo, no "/"
    /// @param sha256Hash sha256 of the model file; hosts verify their copy against it
    /// @param size file size in bytes
    /// @param metadata small free-form JSON (name, quantization, context, ...)
    /// @return modelId keccak256(bytes(repo + "/" + file))
    function addModel(
        string calldata repo,
        string calldata file,
        bytes32 sha256Hash,
        uint64 size,
        string calldata metadata
    ) external onlyRole(CURATOR_ROLE) returns (bytes32 modelId) {
        _checkRepo(repo);
        _checkFile(file);
        if (sha256Hash == bytes32(0)) revert InvalidHash();
        if (size == 0) revert InvalidSize();
        if (bytes(metadata).length > MAX_METADATA_LENGTH) revert MetadataTooLong(bytes(metadata).length);

        modelId = modelIdOf(repo, file);
        Model storage m = _models[modelId];
        if (m.status != Status.None) revert ModelExists(modelId);

        uint32 index = uint32(_ids.length);
        _ids.push(modelId);
        m.sha256Hash = sha256Hash;
        m.size = size;
        m.index = index;
        m.status = Status.Pending;
        m.repo = repo;
        m.file = file;
        m.metadata = metadata;
        emit ModelAdded(modelId, repo, file, sha256Hash, size, index);
    }

    /// @notice Approve a pending or deactivated model so new sessions may use it.
    function approveModel(bytes32 modelId) external onlyRole(CURATOR_ROLE) {
        Model storage m = _existing(modelId);
        if (m.status == Status.Approved) revert AlreadyApproved(modelId);
        m.status = Status.Approved;
        _approved.add(modelId);
        emit ModelApproved(modelId);
    }

    /// @notice Deactivate an approved model: no new session may use it. Open sessions finish.
    function deactivateModel(bytes32 modelId) external onlyRole(CURATOR_ROLE) {
        Model storage m = _existing(modelId);
        if (m.status != Status.Approved) revert NotApproved(modelId);
        m.status = Status.Deactivated;
        _approved.remove(modelId);
        emit ModelDeactivated(modelId);
    }

    /// @notice Replace a model's metadata string.
    function updateMetadata(bytes32 modelId, string calldata metadata) external onlyRole(CURATOR_ROLE) {
        Model storage m = _existing(modelId);
        if (bytes(metadata).length > MAX_METADATA_LENGTH) revert MetadataTooLong(bytes(metadata).length);
        m.metadata = metadata;
        emit ModelMetadataUpdated(modelId, metadata);
    }

    // --------------------------------------------------------------------- views

    /// @notice keccak256(bytes(repo + "/" + file)); does not check the repo's shape.
    function modelIdOf(string calldata repo, string calldata file) public pure returns (bytes32) {
        return keccak256(abi.encodePacked(repo, "/", file));
    }

    /// @inheritdoc IModelRegistry
    function isApproved(bytes32 modelId) external view returns (bool) {
        return _models[modelId].status == Status.Approved;
    }

    /// @inheritdoc IModelRegistry
    function sessionModel(bytes32 modelId) external view returns (bool approved, uint32 index) {
        Model storage m = _models[modelId];
        return (m.status == Status.Approved, m.index);
    }

    /// @inheritdoc IModelRegistry
    function modelIdAt(uint32 index) external view returns (bytes32) {
        if (index >= _ids.length) revert UnknownIndex(index);
        return _ids[index];
    }

    /// @notice Whether the model was ever added (in any state).
    function exists(bytes32 modelId) external view returns (bool) {
        return _models[modelId].status != Status.None;
    }

    /// @notice Full record of a model; reverts for an unknown id.
    function getModel(bytes32 modelId) external view returns (Model memory) {
        return _existing(modelId);
    }

    /// @notice Ids of every approved model (unordered).
    function approvedModels() external view returns (bytes32[] memory) {
        return _approved.values();
    }

    /// @notice Number of approved models.
    function approvedCount() external view returns (uint256) {
        return _approved.length();
    }

    /// @notice Number of models ever added.
    function modelCount() external view returns (uint256) {
        return _ids.length;
    }

    // ------------------------------------------------------------------ internal

    function _existing(bytes32 modelId) private view returns (Model storage m) {
        m = _models[modelId];
        if (m.status == Status.None) revert UnknownModel(modelId);
    }

    /// @dev Exactly one "/" with something on both sides, so repo + "/" + file splits one way only.
    function _checkRepo(string calldata repo) private pure {
        bytes calldata b = bytes(repo);
        uint256 len = b.length;
        if (len < 3 || len > MAX_NAME_LENGTH) revert InvalidRepo(repo);
        uint256 slashes;
        for (uint256 i; i < len; ++i) {
            if (b[i] == "/") ++slashes;
        }
        if (slashes != 1 || b[0] == "/" || b[len - 1] == "/") revert InvalidRepo(repo);
    }

    function _checkFile(string calldata file) private pure {
        bytes calldata b = bytes(file);
        uint256 len = b.length;
        if (len == 0 || len > MAX_NAME_LENGTH) revert InvalidFile(file);
        for (uint256 i; i < len; ++i) {
            if (b[i] == "/") revert InvalidFile(file);
        }
    }
}
