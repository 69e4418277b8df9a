#!/usr/bin/env bash
# Shows that the forge invariant suite catches planted bugs. For each mutation below it
# copies contracts/, test/forge/ and foundry.toml into a temporary tree, applies a one-line
# sed to the copy of one contract, runs the suite there and requires it to FAIL. The working tree is never modified (nothing to restore); the temp tree is removed.
#
#   test/forge/planted-bug.sh            # every mutation
#   test/forge/planted-bug.sh 1 3        # only mutations 1 and 3
#
# Exit 0 when every selected mutation was caught; 1 if any survived (or did not apply).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
. tools/env.sh

# name | file under contracts/ | sed expression | the exact line it must change (fixed string)
JM=JobMarketplace.sol
MUTATIONS=(
  "refund one unit too large|$JM|s/uint256 refund = (maxTokens - used) \* price;/uint256 refund = (maxTokens - used) * price + 1;/|uint256 refund = (maxTokens - used) * price;"
  "fee credited to the treasury but not subtracted from the host's share|$JM|s/hostAmount = payment - fee;/hostAmount = payment;/|hostAmount = payment - fee;"
  "a receipt equal to the recorded count is accepted (replay)|$JM|s/if (tokensUsed <= s.tokensUsed) return Outcome.StaleReceipt;/if (tokensUsed < s.tokensUsed) return Outcome.StaleReceipt;/|if (tokensUsed <= s.tokensUsed) return Outcome.StaleReceipt;"
  "receipts may claim one token beyond the deposit|$JM|s/if (tokensUsed > s.maxTokens) return Outcome.ExceedsDeposit;/if (tokensUsed > uint256(s.maxTokens) + 1) return Outcome.ExceedsDeposit;/|if (tokensUsed > s.maxTokens) return Outcome.ExceedsDeposit;"
  "escrow released one unit short at settlement|$JM|s/uint128(a.escrowed - maxTokens \* price)/uint128(a.escrowed - maxTokens * price + 1)/|uint128(a.escrowed - maxTokens * price)"
  "audit 1: stake lock removed (sessions may outlive the unbonding period)|$JM|s/maxDuration = longest < MAX_DURATION ? longest : MAX_DURATION;/maxDuration = MAX_DURATION;/|maxDuration = longest < MAX_DURATION ? longest : MAX_DURATION;"
  "audit 2: unchecked cast (deposit bounds the balance only, the refund wraps)|$JM|s/SafeCast.toUint128(balance + a.escrowed);/SafeCast.toUint128(balance);/;s/SafeCast.toUint128(a.balance + refund)/uint128(a.balance + refund)/|SafeCast.toUint128(balance + a.escrowed);"
  "withdrawStake returns only the minimum stake|NodeRegistry.sol|s/if (amount != 0) fabToken.safeTransfer(msg.sender, amount);/if (amount != 0) fabToken.safeTransfer(msg.sender, amount < minStake ? amount : minStake);/|if (amount != 0) fabToken.safeTransfer(msg.sender, amount);"
  "slash cap off by one|NodeRegistry.sol|s/if (amount > cap) revert SlashAboveCap(amount, cap);/if (amount > cap + 1) revert SlashAboveCap(amount, cap);/|if (amount > cap) revert SlashAboveCap(amount, cap);"
  "host earnings may be withdrawn into the vault (owned by nobody there)|HostEarnings.sol|s/ \x7c\x7c to == marketplace) revert InvalidRecipient/) revert InvalidRecipient/|to == marketplace) revert InvalidRecipient(to);"
)

selected=("$@")
if [ ${#selected[@]} -eq 0 ]; then
  for i in "${!MUTATIONS[@]}"; do selected+=($((i + 1))); done
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/planted-bug.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/test"
cp -r contracts "$tmp/contracts"
cp -r test/forge "$tmp/test/forge"
cp foundry.toml "$tmp/foundry.toml"
ln -s "$ROOT/node_modules" "$tmp/node_modules"
ln -s "$ROOT/.solcx" "$tmp/.solcx"
# Reuse compiled artifacts of everything the mutation does not touch (not the persisted
# invariant failures: each mutant starts from fresh random sequences).
if [ -d cache ] && [ -d out ]; then
  mkdir -p "$tmp/cache"
  cp cache/solidity-files-cache.json "$tmp/cache/" 2>/dev/null || true
  cp -r out "$tmp/out"
fi
mkdir -p "$tmp/orig"
cp contracts/*.sol "$tmp/orig/"

survived=0
for n in "${selected[@]}"; do
  IFS='|' read -r name file expr line <<<"${MUTATIONS[$((n - 1))]}"
  cp "$tmp"/orig/*.sol "$tmp/contracts/"
  target="$tmp/contracts/$file"
  if [ "$(grep -cF "$line" "$target")" != 1 ]; then
    echo "mutation $n ($name): target line not found exactly once in $file; the contract changed?" >&2
    survived=1
    continue
  fi
  sed -i "$expr" "$target"
  if cmp -s "$tmp/orig/$file" "$target"; then
    echo "mutation $n ($name): sed changed nothing" >&2
    survived=1
    continue
  fi
  echo "==> mutation $n: $name"
  diff "$tmp/orig/$file" "$target" | sed -n 's/^[<>]/    &/p' || true
  log="$tmp/mutation-$n.log"
  start=$(date +%s)
  # A short shrink keeps the demonstration quick; the failing sequence is still printed.
  # Run from inside the temp tree: forge resolves some paths (the persisted-failure
  # directory) from the working directory, and a mutant's failure must not land here.
  if (cd "$tmp" && FOUNDRY_INVARIANT_SHRINK_RUN_LIMIT=50 forge test --root . --config-path foundry.toml \
      --match-contract '^MarketplaceInvariants$') >"$log" 2>&1; then
    echo "    SURVIVED: the invariant suite passed against the mutant" >&2
    survived=1
  elif grep -q '^\[FAIL' "$log"; then
    echo "    caught in $(($(date +%s) - start)) s: $(grep -m1 '^\[FAIL' "$log")"
  else
    echo "    forge failed without a test failure (compile error?):" >&2
    tail -20 "$log" >&2
    survived=1
  fi
done
exit $survived
