"""The vault's books for one token: what the marketplace holds against what it owes.

Anyone can send the vault tokens without calling it (a plain ERC20 transfer, ETH forced
in by selfdestruct), so a check of the books must never ask `held == owed`: a one-unit
donation would fail it. The books balance when the vault holds at least what it owes;
anything above is a surplus owned by nobody, reported on its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VaultBooks:
    """`held`: the marketplace's token balance. `owed`: user balances + open escrow +
    host earnings + treasury fees, as the contracts' ledgers state them."""

    held: int
    owed: int

    @property
    def balanced(self) -> bool:
        """Every owed unit is there (a surplus does not unbalance the books)."""
        return self.held >= self.owed

    @property
    def surplus(self) -> int:
        """Units held that nobody is owed (donations); 0 when short."""
        return max(self.held - self.owed, 0)

    @property
    def shortfall(self) -> int:
        """Units owed that the vault does not hold (a bug, never a donation)."""
        return max(self.owed - self.held, 0)
