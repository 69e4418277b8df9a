// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";
import {IProofSystem} from "./interfaces/IProofSystem.sol";

/// @title ProofSystem
/// @notice Stateless verifier of the client's EIP-712 receipts. The domain is bound to
///         the chain id and to the marketplace that asks, so a receipt can be replayed
///         neither on another chain nor against another deployment.
///         Typed data (also produced byte for byte by the Python SDK):
///         domain  {name: "Fabstir Marketplace", version: "1", chainId, verifyingContract: marketplace}
///         Checkpoint(uint256 sessionId,uint256 tokensUsed,bytes32 contentHash)
///         SessionInit(uint256 sessionId,bytes32 nonce)   (off-chain handshake only)
contract ProofSystem is IProofSystem {
    bytes32 public constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 public constant CHECKPOINT_TYPEHASH =
        keccak256("Checkpoint(uint256 sessionId,uint256 tokensUsed,bytes32 contentHash)");
    bytes32 public constant SESSION_INIT_TYPEHASH = keccak256("SessionInit(uint256 sessionId,bytes32 nonce)");
    bytes32 private constant NAME_HASH = keccak256("Fabstir Marketplace");
    bytes32 private constant VERSION_HASH = keccak256("1");

    /// @notice The EIP-712 domain separator receipts for `marketplace` on this chain use.
    function domainSeparator(address marketplace) public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, marketplace));
    }

    /// @notice The digest a client signs for a Checkpoint receipt.
    function checkpointDigest(address marketplace, uint256 sessionId, uint256 tokensUsed, bytes32 contentHash)
        public
        view
        returns (bytes32)
    {
        bytes32 structHash = keccak256(abi.encode(CHECKPOINT_TYPEHASH, sessionId, tokensUsed, contentHash));
        return MessageHashUtils.toTypedDataHash(domainSeparator(marketplace), structHash);
    }

    /// @notice The digest a client signs to prove it holds the session key.
    function sessionInitDigest(address marketplace, uint256 sessionId, bytes32 nonce) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(SESSION_INIT_TYPEHASH, sessionId, nonce));
        return MessageHashUtils.toTypedDataHash(domainSeparator(marketplace), structHash);
    }

    /// @inheritdoc IProofSystem
    /// @dev ECDSA.tryRecover rejects high-s (malleable) signatures, v other than 27/28
    ///      and any length but 65; each yields address(0) here instead of a revert, so
    ///      one bad item cannot sink a batch.
    function recoverCheckpointSigner(
        address marketplace,
        uint256 sessionId,
        uint256 tokensUsed,
        bytes32 contentHash,
        bytes calldata signature
    ) external view returns (address) {
        return _recover(checkpointDigest(marketplace, sessionId, tokensUsed, contentHash), signature);
    }

    /// @notice Signer of a SessionInit proof, or address(0) if the signature is invalid.
    function recoverSessionInitSigner(address marketplace, uint256 sessionId, bytes32 nonce, bytes calldata signature)
        external
        view
        returns (address)
    {
        return _recover(sessionInitDigest(marketplace, sessionId, nonce), signature);
    }

    function _recover(bytes32 digest, bytes calldata signature) private pure returns (address signer) {
        if (signature.length != 65) return address(0);
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        (signer,,) = ECDSA.tryRecover(digest, v, r, s);
    }
}
