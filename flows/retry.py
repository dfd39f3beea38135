"""Retry policy for tasks that write to the tracking store (a server can blip)."""

from __future__ import annotations

from typing import Any

from wd_pipeline import tracking

TRACKING_RETRIES = 3
TRACKING_RETRY_DELAYS = [2, 5, 15]


def retry_unless_unreachable(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed tracking task, except when the server could not be reached at all.

    MLflow's HTTP client has already retried an unreachable server (see
    ``tracking.HTTP_DEFAULTS``); three more Prefect attempts 2 + 5 + 15 s apart would only
    turn a wrong ``MLFLOW_TRACKING_URI`` into a minute of silence. Used on ``start-tracking``,
    the first contact with the server: an answer with an error, or a later blip, still retries.
    """
    try:
        state.result()
    except Exception as exc:  # the task's own exception, re-raised by the failed state
        return tracking.unreachable_reason(exc) is None
    return True
