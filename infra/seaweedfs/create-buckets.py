"""Create the named S3 buckets that do not exist yet (idempotent: run on every compose start).

Endpoint and credentials from the usual variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY). Run by compose's one-shot ``s3-buckets`` service and by the tests
(tests/helpers/s3.py), so both make their buckets the same way.

    python infra/seaweedfs/create-buckets.py BUCKET [BUCKET ...]
"""

from __future__ import annotations

import os
import sys
import time

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError

WAIT_SECONDS = 60.0  # the store may still be starting when compose runs this


def create(names: list[str]) -> None:
    client = boto3.session.Session().client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
            break
        except EndpointConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    for name in names:
        if name in existing:
            continue
        try:
            client.create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise
        print(f"created bucket {name}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: create-buckets.py BUCKET [BUCKET ...]")
    create(sys.argv[1:])
