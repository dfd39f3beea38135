"""The provenance of a run: read from a real git checkout, and ``unknown`` wherever it cannot be read."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from wd_pipeline import provenance
from wd_pipeline.provenance import Provenance


def git(folder: Path, *args: str) -> str:
    command = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@example.org", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    folder = tmp_path / "checkout"
    folder.mkdir()
    git(folder, "init", "-q")
    (folder / "uv.lock").write_text("version = 1\n")
    (folder / "code.py").write_text("x = 1\n")
    git(folder, "add", ".")
    git(folder, "commit", "-q", "-m", "first")
    return folder


def test_a_clean_checkout_names_its_commit_and_lock_file(checkout: Path) -> None:
    code = provenance.collect(checkout)
    assert code.commit == git(checkout, "rev-parse", "HEAD") and len(code.commit) == 40
    assert code.dirty == "false"
    assert code.lock_sha256 == hashlib.sha256(b"version = 1\n").hexdigest()
    assert set(code.packages) == {"tensorflow", "keras", "mlflow", "prefect", "pandas", "pyarrow"}
    assert code.packages["tensorflow"][0].isdigit() and code.packages["mlflow"][0].isdigit()


def test_a_changed_tracked_file_is_dirty_an_untracked_one_is_not(checkout: Path) -> None:
    (checkout / "notes.txt").write_text("scratch")
    assert provenance.collect(checkout).dirty == "false"
    (checkout / "code.py").write_text("x = 2\n")
    assert provenance.collect(checkout).dirty == "true"


def test_outside_a_checkout_everything_is_unknown_never_an_error(tmp_path: Path) -> None:
    code = provenance.collect(tmp_path)
    assert (code.commit, code.dirty, code.lock_sha256) == ("unknown", "unknown", "unknown")


def test_a_folder_inside_another_checkout_does_not_take_its_commit(checkout: Path) -> None:
    inner = checkout / "vendored"
    inner.mkdir()
    assert provenance.collect(inner).commit == "unknown"


def test_without_git_the_commit_is_unknown(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    assert (provenance.collect(checkout).commit, provenance.collect(checkout).dirty) == ("unknown", "unknown")


def test_tags_round_trip_and_an_untagged_run_reads_as_unknown() -> None:
    code = Provenance(commit="abc", dirty="true", lock_sha256="f" * 64, packages={"keras": "3.15.1"})
    assert code.tags() == {
        "code.git_commit": "abc",
        "code.git_dirty": "true",
        "code.uv_lock_sha256": "f" * 64,
        "code.version.keras": "3.15.1",
    }
    assert Provenance.from_tags(code.tags()) == code
    assert Provenance.from_tags({"mlflow.user": "x"}) == Provenance()
