"""Wall time of the demo lifecycle by phase, and tokens/s seen by the client.

    python bench/demo.py [--runs N]     # table on stdout, bench/results/demo.json

Set-up (venv, compile, model fetch) is excluded: run `make setup` first. Target
(issue 7): the whole lifecycle under 60 s on a 2-core machine once set up.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _common import machine, save, table  # noqa: E402

from fabstir.demo import DemoOptions, run_demo  # noqa: E402

TARGET_SECONDS = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()

    runs = []
    for i in range(args.runs):
        start = time.perf_counter()
        report = asyncio.run(run_demo(DemoOptions()))
        wall = time.perf_counter() - start
        runs.append({"wall_seconds": round(wall, 2), **report.to_dict()})
        print(
            f"run {i + 1}: {wall:.1f}s, {report.tokens_streamed} tokens, {report.tokens_per_second:.1f} tok/s"
        )

    phases = list(runs[0]["phases"])
    rows = [[p, *(f"{r['phases'][p]:.2f}" for r in runs)] for p in phases]
    rows.append(["TOTAL (wall)", *(f"{r['wall_seconds']:.2f}" for r in runs)])
    rows.append(["client tokens/s", *(f"{r['tokens_per_second']:.1f}" for r in runs)])
    print(table(["phase (s)", *(f"run {i + 1}" for i in range(len(runs)))], rows))
    median = statistics.median(r["wall_seconds"] for r in runs)
    verdict = "met" if median < TARGET_SECONDS else "NOT met"
    print(f"\nmedian lifecycle {median:.1f}s; target < {TARGET_SECONDS:.0f}s: {verdict}")
    path = save(
        "demo",
        {
            "machine": machine(),
            "target_seconds": TARGET_SECONDS,
            "median_wall_seconds": median,
            "runs": [
                {
                    k: r[k]
                    for k in (
                        "wall_seconds",
                        "phases",
                        "tokens_streamed",
                        "tokens_per_second",
                        "tokens_used",
                    )
                }
                for r in runs
            ],
        },
    )
    print(f"saved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
