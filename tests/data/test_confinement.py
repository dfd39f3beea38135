"""Data sources are confined to allowed folders and URI schemes (issue #6, "nobody in")."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from wd_pipeline.data import sources
from wd_pipeline.errors import DataError


@pytest.fixture
def outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a CSV in it, chdir'd away from and not listed in WD_PIPELINE_DATA_ROOTS."""
    secret = tmp_path / "secret"
    secret.mkdir()
    pd.DataFrame({"a": [1.0, 2.0], "y": [0, 1]}).to_csv(secret / "d.csv", index=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv(sources.DATA_ROOTS_ENV, "")
    return secret


def test_dotdot_escape_is_refused(outside: Path) -> None:
    with pytest.raises(DataError) as caught:
        sources.locate("../secret/d.csv")
    message = str(caught.value)
    assert f"resolves to {outside / 'd.csv'}, outside the allowed data folders" in message
    assert str(Path.cwd()) in message and "WD_PIPELINE_DATA_ROOTS=" in message


def test_absolute_system_file_is_refused(outside: Path) -> None:
    with pytest.raises(DataError, match=r"data source /etc/passwd resolves to /etc/passwd, outside the allowed"):
        sources.locate("/etc/passwd")


def test_file_uri_is_confined_too(outside: Path) -> None:
    with pytest.raises(DataError, match="outside the allowed data folders"):
        sources.locate("file:///etc/passwd")


def test_refused_before_existence_is_revealed(outside: Path) -> None:
    with pytest.raises(DataError, match="outside the allowed data folders"):
        sources.locate("/etc/no-such-file-here.csv")


def test_symlink_pointing_outside_is_refused(outside: Path) -> None:
    link = Path.cwd() / "innocent.csv"
    link.symlink_to(outside / "d.csv")
    with pytest.raises(DataError, match=f"resolves to {outside / 'd.csv'}, outside"):
        sources.locate("innocent.csv")
    dir_link = Path.cwd() / "shared"
    dir_link.symlink_to(outside)
    with pytest.raises(DataError, match="outside the allowed data folders"):
        sources.locate(str(dir_link / "d.csv"))


def test_root_allowed_through_the_environment(outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sources.DATA_ROOTS_ENV, os.pathsep.join(["/nonexistent-root", str(outside)]))
    assert sources.locate("../secret/d.csv").path == str(outside / "d.csv")
    assert sources.locate((outside / "d.csv").as_uri()).path == str(outside / "d.csv")


def test_working_directory_and_bundled_data_are_allowed(outside: Path) -> None:
    (Path.cwd() / "here.csv").write_text("a,y\n1,0\n")
    assert sources.locate("here.csv").path == str(Path.cwd() / "here.csv")
    assert sources.locate("data/breast_cancer.csv").path.endswith("data/breast_cancer.csv")


@pytest.mark.parametrize(
    "uri", ["http://169.254.169.254/latest/meta-data", "https://example.com/d.csv", "ftp://host/d.csv"]
)
def test_disallowed_scheme_is_refused(uri: str, outside: Path) -> None:
    scheme = uri.split("://")[0]
    with pytest.raises(DataError) as caught:
        sources.locate(uri)
    assert (
        f"data URI scheme {scheme!r} of {uri!r} is not allowed; allowed schemes are ['file', 's3', 'gs', 'hdfs']"
        in str(caught.value)
    )
    assert f"WD_PIPELINE_DATA_SCHEMES=file,s3,gs,hdfs,{scheme}" in str(caught.value)


def test_schemes_can_be_narrowed(outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sources.DATA_SCHEMES_ENV, "file")
    with pytest.raises(DataError, match=r"data URI scheme 's3' .* allowed schemes are \['file'\]"):
        sources.locate("s3://bucket/d.csv")
