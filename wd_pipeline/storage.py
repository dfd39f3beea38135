"""The work folder's storage: a local folder, or an ``s3://bucket/prefix`` on any S3-compatible store.

Every read and write of the work folder (splits, trained units, their results) goes through
here, so nothing else needs to know where the folder is. A local location stays a
:class:`~pathlib.Path` and is read and written as before; a remote one is a URL string.

What is written to S3 is written whole: a folder is built in a local staging folder and
uploaded with its completion mark (the split manifest, the unit result) last, so a reader
that sees the mark sees everything. Those folders are keyed by their content and never
change, so a copy downloaded once (:func:`local_copy`) is reused by every later reader on
this machine, in the cache folder ``$WD_PIPELINE_S3_CACHE`` (default: the system's temporary
folder). Models and tables are read from that copy: Keras and the scorers need files.

Credentials and the endpoint come from the usual AWS variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for a store other than AWS). A store that
stops answering is waited for (see :data:`OUTAGE_SECONDS`) instead of failing the run.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from wd_pipeline.errors import ConfigError

Location = str | Path
T = TypeVar("T")

S3_SCHEME = "s3://"
CACHE_ENV = "WD_PIPELINE_S3_CACHE"
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# How long an unreachable store is waited for before the operation fails: outlasts a restart.
OUTAGE_SECONDS = 120.0
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # then every 8 s until OUTAGE_SECONDS
CREDENTIALS_FIX = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a store other than AWS)"

log = logging.getLogger(__name__)


def is_remote(location: Location) -> bool:
    return isinstance(location, str) and location.startswith(S3_SCHEME)


def join(base: Location, *parts: str) -> Location:
    """``base/part/…``: a Path for a local base, a URL for a remote one."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return Path(base).joinpath(*parts)


def name(location: Location) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1] if is_remote(location) else Path(location).name


def parent(location: Location) -> Location:
    return str(location).rstrip("/").rsplit("/", 1)[0] if is_remote(location) else Path(location).parent


def sibling(location: Location, other: str) -> Location:
    """The file ``other`` in the folder of ``location`` (``Path.with_name`` for both kinds)."""
    return join(parent(location), other)


def absolute(location: Location) -> Location:
    """A local location resolved (flows hand it to other processes); a URL as it is."""
    return str(location).rstrip("/") if is_remote(location) else Path(location).resolve()


def endpoint() -> str | None:
    return next((os.environ[key] for key in ENDPOINT_ENVS if os.environ.get(key)), None)


def _bucket_key(location: str) -> tuple[str, str]:
    bucket, _, key = location.removeprefix(S3_SCHEME).partition("/")
    return bucket, key.strip("/")


# ---------------------------------------------------------------- remote access


def filesystem() -> Any:
    """The s3fs filesystem for the current variables (one per process and set of variables)."""
    return _filesystem(
        os.getpid(), endpoint(), os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    )


@functools.lru_cache(maxsize=4)
def _filesystem(pid: int, endpoint_url: str | None, key: str | None, secret: str | None) -> Any:
    import s3fs

    return s3fs.S3FileSystem(
        key=key,
        secret=secret,
        client_kwargs={"endpoint_url": endpoint_url} if endpoint_url else {},
        # Other processes write the same prefixes: never answer from a stale listing.
        use_listings_cache=False,
        skip_instance_cache=True,
    )


def _transient(exc: BaseException) -> bool:
    """The store did not answer (down, restarting, connection cut), as opposed to answering with an error."""
    import aiohttp
    import botocore.exceptions

    kinds = (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectionClosedError,
        botocore.exceptions.ReadTimeoutError,
        botocore.exceptions.ConnectTimeoutError,
        aiohttp.ClientConnectionError,
        ConnectionError,
        TimeoutError,
    )
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kinds):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retrying(operation: Callable[[], T], what: str) -> T:
    """Run a remote operation, waiting out a store that does not answer for up to :data:`OUTAGE_SECONDS`.

    Each operation here is idempotent (a put of the same bytes, a read), so repeating it is safe.
    """
    deadline = time.monotonic() + OUTAGE_SECONDS
    attempt = 0
    while True:
        try:
            return operation()
        except Exception as exc:
            if not _transient(exc) or time.monotonic() >= deadline:
                raise
            if attempt == 0:
                log.warning(
                    "S3 store at %s not answering (%s); retrying for up to %.0f s", endpoint(), what, OUTAGE_SECONDS
                )
            time.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
            attempt += 1


def _path(location: str) -> str:
    return location.removeprefix(S3_SCHEME)


# ---------------------------------------------------------------- reads and writes


def exists(location: Location) -> bool:
    if not is_remote(location):
        return Path(location).exists()
    return _retrying(lambda: filesystem().exists(_path(str(location))), f"exists {location}")


def read_bytes(location: Location) -> bytes:
    if not is_remote(location):
        return Path(location).read_bytes()
    return _retrying(lambda: filesystem().cat_file(_path(str(location))), f"read {location}")


def read_text(location: Location) -> str:
    return read_bytes(location).decode()


def write_text(location: Location, text: str) -> None:
    """Written whole: locally through a temporary file and a rename; on S3 one object put is atomic."""
    if not is_remote(location):
        path = Path(location)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(text)
        tmp.replace(path)
        return
    data = text.encode()
    _retrying(lambda: filesystem().pipe_file(_path(str(location)), data), f"write {location}")


def upload_folder(local: Path, location: str, last: str) -> None:
    """Every file of ``local`` to ``location``, the completion mark ``last`` after all the others."""
    files = sorted(path for path in local.rglob("*") if path.is_file())
    ordered = [path for path in files if path.name != last] + [path for path in files if path.name == last]
    for path in ordered:
        target = _path(str(join(location, *path.relative_to(local).parts)))
        _retrying(lambda path=path, target=target: filesystem().put_file(str(path), target), f"upload {target}")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "wd-pipeline-s3-cache")


def cache_path(location: str) -> Path:
    """Where this machine keeps its copy of a remote location."""
    bucket, key = _bucket_key(location)
    return cache_root().joinpath(bucket, *key.split("/"))


def local_copy(location: Location) -> Path:
    """A local folder (or file) with the content of ``location``: itself when local, else the cached copy.

    Only for folders that no longer change (complete splits and units): the copy is downloaded
    once per machine, into a staging folder renamed into place, so a half copy is never used.
    """
    if not is_remote(location):
        return Path(location)
    location = str(location).rstrip("/")
    folder = cache_path(location)
    if folder.exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}")
    try:
        _retrying(lambda: filesystem().get(_path(location) + "/", str(staging), recursive=True), f"download {location}")
        _settle(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def local_file(location: Location) -> Path:
    """A file of a complete folder, read from the folder's local copy."""
    if not is_remote(location):
        return Path(location)
    return local_copy(parent(location)) / name(location)


def _settle(staging: Path, folder: Path) -> None:
    """Rename a finished staging folder into place; another process may have been quicker."""
    try:
        staging.rename(folder)
    except OSError:
        if not folder.exists():
            raise


@contextlib.contextmanager
def writing_folder(location: Location, last: str) -> Iterator[Path]:
    """A local folder to write ``location``'s files into; on S3 uploaded on success, ``last`` last.

    Locally that is the folder itself (the caller writes ``last`` last). For S3 the staging
    folder becomes this machine's cached copy once uploaded.
    """
    if not is_remote(location):
        Path(location).mkdir(parents=True, exist_ok=True)
        yield Path(location)
        return
    folder = cache_path(str(location))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
        upload_folder(staging, str(location), last)
        _settle(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_file(local: Path, location: Location) -> None:
    """Put a file rewritten in a local copy (:func:`local_file`) back at ``location``: nothing to do when local."""
    if is_remote(location):
        target = _path(str(location))
        _retrying(lambda: filesystem().put_file(str(local), target), f"upload {location}")


# ---------------------------------------------------------------- checks


def check_writable(location: str) -> None:
    """Prove an ``s3://`` work folder usable before a run starts: credentials, bucket, a write, a delete.

    Each way it can fail is one :class:`ConfigError` line saying what to fix.
    """
    import botocore.exceptions

    bucket, key = _bucket_key(location)
    if not bucket:
        raise ConfigError(f"work folder {location} names no bucket: pass --work-dir s3://BUCKET/PREFIX")
    if not _has_credentials():
        raise ConfigError(f"no S3 credentials for work folder {location}: {CREDENTIALS_FIX}")
    probe = "/".join(part for part in (key, f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}") if part)
    client = _client()
    where = endpoint() or "AWS"
    try:
        _retrying(lambda: client.put_object(Bucket=bucket, Key=probe, Body=b""), f"write {location}")
        _retrying(lambda: client.delete_object(Bucket=bucket, Key=probe), f"delete in {location}")
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise ConfigError(
                f"S3 bucket {bucket!r} does not exist at {where}: create it or pass --work-dir with an existing bucket"
            ) from None
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}:
            raise ConfigError(
                f"the S3 store at {where} refused the credentials for {location} ({code}): "
                "set the right AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from None
        raise ConfigError(f"work folder {location} is not writable ({code or exc}): {CREDENTIALS_FIX}") from None
    except (botocore.exceptions.BotoCoreError, OSError) as exc:
        if _transient(exc):
            raise ConfigError(
                f"the S3 store at {where} does not answer (for work folder {location}): "
                "start it or set AWS_ENDPOINT_URL to where it runs"
            ) from None
        raise ConfigError(
            f"work folder {location} is not usable ({type(exc).__name__}: {exc}): {CREDENTIALS_FIX}"
        ) from None


def _has_credentials() -> bool:
    """A key pair in the environment or a shared credentials file.

    Not botocore's whole chain: its last resort asks a cloud metadata address, which off a
    cloud machine only costs a timeout before the same answer.
    """
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return True
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials"
    return Path(shared).is_file()


def _client() -> Any:
    import boto3
    from botocore.config import Config

    # botocore's own retries are short; _retrying waits out a longer outage.
    return boto3.client("s3", endpoint_url=endpoint(), config=Config(retries={"max_attempts": 2, "mode": "standard"}))


def keep_log(log_path: Path, work_dir: Location) -> None:
    """Copy the run's log file into a remote work folder (the local copy stays where it was written).

    Called on the way out of a command, whatever its outcome: a failed upload is a warning on
    the terminal, never a second error.
    """
    if not is_remote(work_dir) or not log_path.exists():
        return
    target = join(work_dir, log_path.name)
    try:
        _retrying(lambda: filesystem().put_file(str(log_path), _path(str(target))), f"upload {target}")
    except Exception as exc:
        log.warning("The log file stays at %s only: uploading it to %s failed (%s)", log_path, target, exc)
