"""Gas of the session lifecycle on a fresh local deployment (anvil, real contracts).

    python bench/gas.py            # table on stdout, bench/results/gas.json

Gas is deterministic for a given state, so the state is stated: "cold" is the very
first session of fresh accounts on a fresh deployment (every storage slot new);
"warm" is the same accounts' next session (host and treasury have been paid and have
withdrawn before, the client has used the marketplace) - the steady state of a live
marketplace.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)
sys.path.insert(0, str(ROOT / "bench"))

from _common import machine, save, table  # noqa: E402
from ape import accounts, networks, project  # noqa: E402
from eth_account import Account  # noqa: E402

from fabstir.chain.params import DeployParams  # noqa: E402
from fabstir.chain.system import Roles, deploy_system  # noqa: E402
from fabstir.protocol.receipts import Eip712Domain, ReceiptSigner  # noqa: E402

PRICE = 200
DEPOSIT = 1_000_000  # 1.00 USDC
DURATION = 3600
PROOF_INTERVAL = 100
TARGETS = {
    "lifecycle_3": 450_000,
    "lifecycle_3_stretch": 400_000,
    "submitCheckpoint": 45_000,
    "createSession": 150_000,
    "batch_per_session": 30_000,
}


@dataclass
class Run:
    label: str
    rows: list[tuple[str, int]] = field(default_factory=list)

    def add(self, step: str, receipt: Any) -> None:
        self.rows.append((step, int(receipt.gas_used)))

    @property
    def total(self) -> int:
        return sum(g for _, g in self.rows)


class Bench:
    def __init__(self) -> None:
        test = accounts.test_accounts
        self.deployer, self.host, self.treasurer = test[0], test[1], test[2]
        self.clients = [test[i] for i in range(3, 9)]
        self.sys = deploy_system(
            project,
            self.deployer,
            DeployParams(),
            Roles(self.deployer, self.deployer, self.treasurer),
        )
        s, d = self.sys, self.deployer
        s.model_registry.addModel("bench/model", "m.gguf", b"\x01" * 32, 1, "{}", sender=d)
        self.model = s.model_registry.modelIdOf("bench/model", "m.gguf")
        s.model_registry.approveModel(self.model, sender=d)
        stake = DeployParams().min_stake
        s.fab.transfer(self.host, stake, sender=d)
        s.fab.approve(s.node_registry, stake, sender=self.host)
        s.node_registry.register(
            stake,
            "ws://127.0.0.1:8080",
            "{}",
            [self.model],
            [s.usdc.address],
            [PRICE],
            sender=self.host,
        )
        for c in self.clients:
            s.usdc.mint(c, 10**12, sender=d)
        self.key = Account.create()
        domain = Eip712Domain(networks.provider.chain_id, s.marketplace.address)
        self.signer = ReceiptSigner(self.key.key, domain)

    def _receipt(self, sid: int, tokens: int) -> tuple[int, int, bytes, bytes]:
        """A signed receipt as the contract takes it (Receipt.call_args)."""
        return self.signer.sign(sid, tokens, b"\x22" * 32).call_args()

    def _open(self, client: Any) -> Any:
        """The standard session: 1 USDC at 200 per token, 1 h, proof interval 100."""
        return self.sys.marketplace.createSessionFromWallet(
            self.host,
            self.model,
            self.sys.usdc,
            DEPOSIT,
            PRICE,
            DURATION,
            PROOF_INTERVAL,
            self.key.address,
            sender=client,
        )

    def lifecycle(self, label: str, client: Any, receipts: int, fold_last: bool = False) -> Run:
        s, run = self.sys, Run(label)
        mp = s.marketplace
        run.add("USDC approve", s.usdc.approve(mp, DEPOSIT, sender=client))
        run.add("createSessionFromWallet", self._open(client))
        sid = int(mp.sessionCount())
        plain = receipts - 1 if fold_last else receipts
        for i in range(1, plain + 1):
            run.add(
                f"submitCheckpoint #{i}",
                mp.submitCheckpoint(*self._receipt(sid, 100 * i), sender=self.host),
            )
        if fold_last:
            run.add(
                f"settleWithReceipt (#{receipts})",
                mp.settleWithReceipt(*self._receipt(sid, 100 * receipts), sender=self.host),
            )
        else:
            run.add("settle", mp.settle(sid, sender=self.host))
        run.add("HostEarnings.withdraw", s.host_earnings.withdraw(s.usdc, sender=self.host))
        fees = s.treasury.balanceOf(s.usdc)
        run.add(
            "Treasury.withdraw",
            s.treasury.withdraw(s.usdc, self.treasurer, fees, sender=self.treasurer),
        )
        return run

    def batch(self, n: int) -> tuple[Run, int]:
        s, run = self.sys, Run(f"settleBatch of {n} sessions, fresh receipt each (warm)")
        mp = s.marketplace
        ids = []
        for i in range(n):
            client = self.clients[i % len(self.clients)]
            s.usdc.approve(mp, DEPOSIT, sender=client)
            self._open(client)
            ids.append(int(mp.sessionCount()))
        items = [self._receipt(sid, 150) for sid in ids]
        receipt = mp.settleBatch(items, sender=self.host)
        run.add(f"settleBatch ({n} items)", receipt)
        return run, int(receipt.gas_used) // n


def main() -> None:
    with networks.parse_network_choice("ethereum:local:foundry"):
        b = Bench()
        c0, c1 = b.clients[0], b.clients[1]
        runs = [
            b.lifecycle("3 receipts, cold (first session ever)", c0, 3),
            b.lifecycle("3 receipts, warm (steady state)", c0, 3),
            b.lifecycle("3 receipts, warm, last receipt folded into settle", c0, 3, fold_last=True),
            b.lifecycle("10 receipts, warm", c0, 10),
            b.lifecycle("10 receipts, cold client", c1, 10),
        ]
        batch_run, per_session = b.batch(10)
        runs.append(batch_run)

    for run in runs:
        print(f"\n{run.label}")
        print(
            table(
                ["transaction", "gas"],
                [[k, f"{v:,}"] for k, v in run.rows] + [["TOTAL", f"{run.total:,}"]],
            )
        )
    warm = runs[1]
    checkpoints = [g for k, g in warm.rows if k.startswith("submitCheckpoint")]
    create = next(g for k, g in warm.rows if k.startswith("create"))
    checks = [
        [
            "3-receipt lifecycle, warm",
            f"{warm.total:,}",
            f"<= {TARGETS['lifecycle_3']:,}",
            warm.total <= TARGETS["lifecycle_3"],
        ],
        [
            "3-receipt lifecycle, cold",
            f"{runs[0].total:,}",
            f"<= {TARGETS['lifecycle_3']:,}",
            runs[0].total <= TARGETS["lifecycle_3"],
        ],
        [
            "3-receipt lifecycle, folded",
            f"{runs[2].total:,}",
            f"<= {TARGETS['lifecycle_3']:,}",
            runs[2].total <= TARGETS["lifecycle_3"],
        ],
        [
            "max submitCheckpoint",
            f"{max(checkpoints):,}",
            f"<= {TARGETS['submitCheckpoint']:,}",
            max(checkpoints) <= TARGETS["submitCheckpoint"],
        ],
        [
            "createSessionFromWallet, warm",
            f"{create:,}",
            f"<= {TARGETS['createSession']:,}",
            create <= TARGETS["createSession"],
        ],
        [
            "settleBatch per session",
            f"{per_session:,}",
            f"<= {TARGETS['batch_per_session']:,}",
            per_session <= TARGETS["batch_per_session"],
        ],
    ]
    print("\nTargets (original system: 1,881,797 for the 3-proof lifecycle)")
    print(table(["measure", "gas", "target", "met"], checks))
    path = save(
        "gas",
        {
            "machine": machine(),
            "note": "gas is deterministic for the stated state; anvil 1.7.1, solc 0.8.28 cancun, optimizer 10000 runs",
            "runs": [
                {"label": r.label, "transactions": dict(r.rows), "total": r.total} for r in runs
            ],
            "batch_per_session": per_session,
            "targets": [
                dict(zip(["measure", "gas", "target", "met"], c, strict=True)) for c in checks
            ],
        },
    )
    print(f"\nsaved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
