"""Which code made a run: the git commit, uncommitted changes, the lock file and key package versions.

Recorded as tags on every pipeline run and registered version, and shown in the model card,
so a model can be traced back to the source and environment that trained it. Collecting
never fails: outside a git checkout, without git, or without ``uv.lock`` a value is
``unknown``.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from wd_pipeline.config import PROJECT_ROOT

UNKNOWN = "unknown"
NOT_INSTALLED = "not installed"
# Each package by the distributions that may provide it (the project installs TensorFlow's CPU build).
PACKAGES: dict[str, tuple[str, ...]] = {
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "keras": ("keras",),
    "mlflow": ("mlflow",),
    "prefect": ("prefect",),
    "pandas": ("pandas",),
    "pyarrow": ("pyarrow",),
}
GIT_TIMEOUT_SECONDS = 5.0
TAG_PREFIX = "code."
COMMIT_TAG = "code.git_commit"
DIRTY_TAG = "code.git_dirty"
LOCK_TAG = "code.uv_lock_sha256"
VERSION_TAG_PREFIX = "code.version."


@dataclass(frozen=True)
class Provenance:
    """The code and environment of one run, as strings ready to be tags."""

    commit: str = UNKNOWN
    # "true" when tracked files differ from the commit (untracked files are not counted),
    # "false" when they do not, UNKNOWN outside a git checkout.
    dirty: str = UNKNOWN
    lock_sha256: str = UNKNOWN
    packages: dict[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        return {
            COMMIT_TAG: self.commit,
            DIRTY_TAG: self.dirty,
            LOCK_TAG: self.lock_sha256,
            **{VERSION_TAG_PREFIX + name: version for name, version in self.packages.items()},
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Provenance:
        """What :meth:`tags` wrote; what is missing (a run older than these tags) is ``unknown``."""
        packages = {
            key.removeprefix(VERSION_TAG_PREFIX): value
            for key, value in tags.items()
            if key.startswith(VERSION_TAG_PREFIX)
        }
        return cls(
            commit=tags.get(COMMIT_TAG, UNKNOWN),
            dirty=tags.get(DIRTY_TAG, UNKNOWN),
            lock_sha256=tags.get(LOCK_TAG, UNKNOWN),
            packages=packages,
        )


def collect(root: Path = PROJECT_ROOT) -> Provenance:
    """The provenance of the code in ``root`` and of the installed packages."""
    commit = _git(root, "rev-parse", "HEAD")
    changes = _git(root, "status", "--porcelain", "--untracked-files=no") if commit is not None else None
    return Provenance(
        commit=commit or UNKNOWN,
        dirty=UNKNOWN if changes is None else str(bool(changes)).lower(),
        lock_sha256=file_sha256(root / "uv.lock"),
        packages={name: package_version(*distributions) for name, distributions in PACKAGES.items()},
    )


def _git(root: Path, *args: str) -> str | None:
    """``git``'s output in ``root`` when ``root`` is the top of a checkout; None on any failure."""
    try:
        top = _run_git(root, "rev-parse", "--show-toplevel")
        # Installed elsewhere (e.g. inside another project's checkout), the enclosing repository is not ours.
        if Path(top).resolve() != root.resolve():
            return None
        return _run_git(root, *args)
    except (OSError, subprocess.SubprocessError):
        return None


def _run_git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT_SECONDS,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return done.stdout.strip()


def file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return UNKNOWN


def package_version(*distributions: str) -> str:
    """The installed version of the first of ``distributions`` that is installed."""
    for distribution in distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return NOT_INSTALLED
