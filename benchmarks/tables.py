"""Raw tables: packed training on a mixed table's encoded rows against a numeric table of the same width.

``python -m benchmarks.tables [--rows N] [--epochs E]`` prints a markdown section for
``RESULTS.md``. Two mixed tables (20 numeric + 10 string columns, 5 % gaps): one whose
vocabularies all stay one-hot (at most 60 categories), one whose three largest vocabularies
(76-200 categories) are embedded. Each runs in its own process, as the other benchmarks do.
"""

from __future__ import annotations

import argparse
import os

from benchmarks.__main__ import run_workload

GRID = [0.0, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tables", description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    print(f"load average at start {os.getloadavg()}", flush=True)
    lines = [
        "| table | rows | encoded width (first layer) | embedded columns | mixed s | numeric s | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, largest in (("one-hot only", 60), ("with embeddings", 200)):
        result = run_workload(
            "throughput", rows=args.rows, lams=GRID, epochs=args.epochs, batch_size=32, largest_vocabulary=largest
        )
        ratio = result["mixed_seconds"] / result["numeric_seconds"]
        lines.append(
            f"| {label} | {result['rows']:,} | {result['first_layer_width']} | {result['embedded_columns']} | "
            f"{result['mixed_seconds']:.1f} | {result['numeric_seconds']:.1f} | ×{ratio:.2f} |"
        )
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
