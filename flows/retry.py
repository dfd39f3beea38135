"""Retry policy for tasks that write to the tracking store (a server can blip, restart or be redeployed).

A tracking task that fails on a transient error (see :func:`wd_pipeline.tracking.runs.is_transient`)
is retried 5 times, 2, 4, 8, 16 and 32 s apart on average (±20 % jitter, so that tasks that
failed together do not all come back in the same second): about a minute of waiting, plus
MLflow's own ~3 s of HTTP retries per attempt, which outlasts a server restart. Any other
error fails at once. The tasks are idempotent (runs are found again by name, metrics are
stamped so a re-log stores nothing twice), so a retry after a half-done attempt is safe.
A task that ran out of its own time (see :mod:`flows.timeouts`) is never retried, although a
timeout is otherwise transient: another attempt would only wait its whole bound again.
"""

from __future__ import annotations

from typing import Any

from wd_pipeline.errors import first_line
from wd_pipeline.tracking import runs

TRACKING_RETRIES = 5
TRACKING_BACKOFF_SECONDS = 2.0
TRACKING_RETRY_DELAYS = [TRACKING_BACKOFF_SECONDS * 2**attempt for attempt in range(TRACKING_RETRIES)]
TRACKING_RETRY_JITTER = 0.2


def _failure(state: Any) -> BaseException | None:
    """The task's own exception, re-raised by its failed state."""
    try:
        state.result()
    except Exception as exc:
        return exc
    return None


def _timed_out(failure: BaseException | None) -> bool:
    from prefect.task_engine import TaskRunTimeoutError

    return isinstance(failure, TaskRunTimeoutError)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed tracking task only when repeating it can help (server down, busy, restarting)."""
    failure = _failure(state)
    return failure is None or (runs.is_transient(failure) and not _timed_out(failure))


def retry_unless_unreachable(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed tracking task, except when the server could not be reached at all.

    MLflow's HTTP client has already retried an unreachable server (see
    ``runs.HTTP_DEFAULTS``); a minute of Prefect retries would only turn a wrong
    ``MLFLOW_TRACKING_URI`` into a minute of silence. Used on ``start-tracking``, the first
    contact with the server: an answer with an error, or a later blip, still retries.
    """
    failure = _failure(state)
    return failure is None or (runs.unreachable_reason(failure) is None and not _timed_out(failure))


def finish_quietly(client: Any, run_id: str, status: str) -> None:
    """Close a run on the way out of a failure; when the server is what failed, keep the first error."""
    from prefect import get_run_logger

    try:
        runs.finish(client, run_id, status)
    except Exception as exc:
        get_run_logger().warning("Could not mark MLflow run %s %s: %s", run_id, status, first_line(exc, 200))


TRACKING_TASK: dict[str, Any] = {
    "retries": TRACKING_RETRIES,
    "retry_delay_seconds": TRACKING_RETRY_DELAYS,
    "retry_jitter_factor": TRACKING_RETRY_JITTER,
    "retry_condition_fn": retry_if_transient,
}
"""Keyword arguments of ``@task`` for every task that writes to MLflow after the run has started."""
