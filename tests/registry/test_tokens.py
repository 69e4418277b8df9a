"""FABToken (staking token) and MockUSDC (local payment token)."""

import pytest
from eip712.messages import EIP712Domain, EIP712Message
from eth_pydantic_types import abi

pytestmark = pytest.mark.usefixtures("deployment")

# Local copies: `from conftest import` is ambiguous once other folders have a conftest.py.
FAB = 10**18
USDC = 10**6
FAB_SUPPLY = 10**9 * FAB


class Permit(EIP712Message):
    """ERC-2612 Permit; the domain (token name, chain, address) is given per instance."""

    owner: abi.address
    spender: abi.address
    value: abi.uint256
    nonce: abi.uint256
    deadline: abi.uint256


def test_fab_supply_goes_to_holder(fab, admin):
    assert fab.totalSupply() == FAB_SUPPLY
    assert fab.balanceOf(admin) == FAB_SUPPLY


def test_fab_metadata(fab):
    assert fab.decimals() == 18
    assert fab.name() == "Fabstir Token"
    assert fab.symbol() == "FAB"


def test_fab_transfer(fab, admin, host):
    receipt = fab.transfer(host, 5 * FAB, sender=admin)
    assert receipt.events == [fab.Transfer(admin, host, 5 * FAB)]
    assert fab.balanceOf(host) == 5 * FAB


def test_fab_has_no_mint(fab):
    # Fixed supply: nothing can mint after deployment.
    assert not hasattr(fab, "mint")


def test_fab_supports_permit(fab, chain, admin, host):
    # ERC-2612: nonces start at zero and the domain is bound to this chain and token.
    assert fab.nonces(admin) == 0
    assert fab.nonces(host) == 0
    _fields, name, version, chain_id, contract, *_ = fab.eip712Domain()
    assert name == "Fabstir Token"
    assert version == "1"
    assert chain_id == chain.chain_id
    assert contract == fab.address
    assert len(fab.DOMAIN_SEPARATOR()) == 32


def test_fab_permit_signature_sets_allowance(fab, chain, host, client):
    deadline = chain.pending_timestamp + 3600
    permit = Permit(
        owner=host.address,
        spender=client.address,
        value=7 * FAB,
        nonce=0,
        deadline=deadline,
        eip712_domain=EIP712Domain(
            name="Fabstir Token",
            version="1",
            chainId=chain.chain_id,
            verifyingContract=fab.address,
        ),
    )
    sig = host.sign_message(permit)
    # Anyone may submit the signed permit; the spender pays the gas here.
    fab.permit(host, client, 7 * FAB, deadline, sig.v, sig.r, sig.s, sender=client)
    assert fab.allowance(host, client) == 7 * FAB
    assert fab.nonces(host) == 1


def test_usdc_metadata(usdc):
    assert usdc.decimals() == 6
    assert usdc.symbol() == "USDC"
    assert usdc.totalSupply() == 0


def test_usdc_anyone_can_mint(usdc, outsider, client):
    receipt = usdc.mint(client, 250 * USDC, sender=outsider)
    assert receipt.events == [
        usdc.Transfer("0x0000000000000000000000000000000000000000", client, 250 * USDC)
    ]
    assert usdc.balanceOf(client) == 250 * USDC
    assert usdc.totalSupply() == 250 * USDC
