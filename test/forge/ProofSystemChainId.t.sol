// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Vm, VM_ADDRESS} from "./Vm.sol";
import {ProofSystem} from "../../contracts/ProofSystem.sol";

/// @title ProofSystemChainId
/// @notice Every other suite runs on one chain id, so a domain with the chain id written in
///         as a constant would pass them all. Here the chain id changes under a deployed
///         ProofSystem: the domain and the digests must follow it, and a receipt signed for
///         one chain must not verify on another.
contract ProofSystemChainId {
    Vm private constant vm = Vm(VM_ADDRESS);
    address private constant MARKET = address(0x3A4E7);
    uint256 private constant KEY = 0x5E55;

    error Mismatch(string what);

    function _expectedDomain(uint256 chainId) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("Fabstir Marketplace"),
                keccak256("1"),
                chainId,
                MARKET
            )
        );
    }

    function _sign(bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(KEY, digest);
        return abi.encodePacked(r, s, v);
    }

    function test_domainAndDigestFollowTheChainId() public {
        ProofSystem proofs = new ProofSystem();
        address signer = vm.addr(KEY);
        uint256[3] memory ids = [uint256(31337), 8453, 84532];
        bytes32[3] memory digests;
        for (uint256 i; i < ids.length; ++i) {
            vm.chainId(ids[i]);
            if (proofs.domainSeparator(MARKET) != _expectedDomain(ids[i])) revert Mismatch("domain");
            digests[i] = proofs.checkpointDigest(MARKET, 7, 100, keccak256("t"));
            bytes memory sig = _sign(digests[i]);
            if (proofs.recoverCheckpointSigner(MARKET, 7, 100, keccak256("t"), sig) != signer) {
                revert Mismatch("own chain's receipt");
            }
        }
        if (digests[0] == digests[1] || digests[1] == digests[2] || digests[0] == digests[2]) {
            revert Mismatch("digest did not change with the chain id");
        }
        // A receipt signed on chain 31337, presented on 8453: some other (random) signer.
        bytes memory foreign = _sign(digests[0]);
        vm.chainId(8453);
        if (proofs.recoverCheckpointSigner(MARKET, 7, 100, keccak256("t"), foreign) == signer) {
            revert Mismatch("cross-chain replay verified");
        }
    }
}
