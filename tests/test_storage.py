"""wd_pipeline/storage.py: locations of both kinds, what counts as an outage, and folders written whole to S3."""

from __future__ import annotations

from pathlib import Path

import botocore.exceptions
import pytest

from tests.helpers.s3 import BUCKET, SeaweedS3
from wd_pipeline import storage


def test_local_locations_stay_paths_and_urls_stay_urls(tmp_path: Path) -> None:
    assert storage.join(tmp_path, "points", "k") == tmp_path / "points" / "k"
    assert storage.join("s3://b/work/", "points", "k") == "s3://b/work/points/k"
    assert storage.sibling("s3://b/w/points/k/model.keras", "result.json") == "s3://b/w/points/k/result.json"
    assert storage.sibling(tmp_path / "k" / "model.keras", "result.json") == tmp_path / "k" / "result.json"
    assert storage.name("s3://b/w/splits/abc/") == "abc"
    assert storage.cache_path("s3://b/w/splits/abc") == storage.cache_root() / "b" / "w" / "splits" / "abc"
    assert storage.absolute("s3://b/w/") == "s3://b/w"
    assert not storage.is_remote("s3-folder/x") and storage.is_remote("s3://b")


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(response, "PutObject")  # type: ignore[arg-type]


def test_only_a_store_that_does_not_answer_or_answers_5xx_is_waited_for() -> None:
    down = botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    wrapped = OSError(5, "upload failed")
    wrapped.__cause__ = client_error("InternalError", 500)
    assert storage._transient(down) and storage._transient(wrapped)
    assert not storage._transient(client_error("AccessDenied", 403))
    assert not storage._transient(client_error("NoSuchBucket", 404))
    assert not storage._transient(ValueError("bad"))


def test_a_refusal_fails_at_once_and_an_outage_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "RETRY_DELAYS", (0.0,))
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
        return "done"

    assert storage._retrying(flaky, "test") == "done" and len(calls) == 3
    refused = client_error("AccessDenied", 403)
    with pytest.raises(botocore.exceptions.ClientError):
        storage._retrying(lambda: (_ for _ in ()).throw(refused), "test")


@pytest.mark.stack
def test_a_folder_reaches_s3_whole_or_without_its_mark(s3_work_dir: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    done = storage.join(s3_work_dir, "done")
    with storage.writing_folder(done, last="mark.json") as local:
        (local / "mark.json").write_text("{}")
        (local / "data.bin").write_bytes(b"x" * 1000)
    assert storage.exists(storage.join(done, "mark.json")) and storage.exists(storage.join(done, "data.bin"))
    assert storage.local_copy(done) == storage.cache_path(done)  # the writer's staging became its copy

    broken = storage.join(s3_work_dir, "broken")
    with pytest.raises(RuntimeError), storage.writing_folder(broken, last="mark.json") as local:
        (local / "mark.json").write_text("{}")
        raise RuntimeError("killed while writing")
    assert not storage.exists(storage.join(broken, "mark.json"))

    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "other-machine"))
    copy = storage.local_copy(done)
    assert (copy / "data.bin").read_bytes() == b"x" * 1000 and copy.is_relative_to(tmp_path / "other-machine")
    storage.write_text(storage.join(done, "note.txt"), "hello")
    assert storage.read_text(storage.join(done, "note.txt")) == "hello"


@pytest.mark.stack
def test_the_s3_fixture_refuses_a_wrong_secret(s3_server: SeaweedS3) -> None:
    with pytest.raises(botocore.exceptions.ClientError, match="SignatureDoesNotMatch"):
        s3_server.client(aws_secret_access_key="wrong").list_objects_v2(Bucket=BUCKET)
