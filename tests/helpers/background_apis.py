"""Stopping the background Prefect APIs that runs given a home of their own leave behind."""

from __future__ import annotations

from pathlib import Path


def stop_background_apis(folder: Path) -> None:
    """Stop every background Prefect API whose home is under ``folder``.

    A run given a home of its own starts one there, which would idle for an hour; each costs a
    little CPU all the while, taken from the tests still running.
    """
    from wd_pipeline.ops import local_api

    for state in folder.rglob(local_api.STATE_FILE):
        local_api.stop(state.parent)
