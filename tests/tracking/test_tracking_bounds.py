"""Bounded failure on an unreachable tracking server: HTTP defaults and the retry condition."""

from __future__ import annotations

import os

import pytest
import requests

from flows.retry import TRACKING_TASK, retry_if_transient, retry_unless_unreachable
from wd_pipeline.errors import TrackingError
from wd_pipeline.tracking import runs


class FailedState:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def result(self) -> None:
        raise self.exc


def refused() -> TrackingError:
    try:
        try:
            raise requests.exceptions.ConnectionError(
                "HTTPConnectionPool: Max retries exceeded"
            ) from ConnectionRefusedError(111, "Connection refused")
        except requests.exceptions.ConnectionError as exc:
            raise TrackingError("cannot reach") from exc
    except TrackingError as exc:
        return exc


def test_defaults_bound_mlflow_but_never_override_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    runs.bound_http_requests()

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"


def test_unreachable_reasons() -> None:
    assert runs.unreachable_reason(refused()) == "connection refused"
    assert runs.unreachable_reason(requests.exceptions.ConnectTimeout("slow")).startswith("no answer within")
    assert runs.unreachable_reason(TrackingError("RESOURCE_DOES_NOT_EXIST")) is None


def test_start_tracking_is_not_retried_when_unreachable() -> None:
    assert retry_unless_unreachable(None, None, FailedState(refused())) is False
    assert retry_unless_unreachable(None, None, FailedState(TrackingError("database is locked"))) is True


def test_transient_failures_are_retried_mid_run_and_others_fail_at_once() -> None:
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    assert runs.is_transient(refused())
    assert runs.is_transient(requests.exceptions.ReadTimeout("slow"))
    assert runs.is_transient(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}))
    assert runs.is_transient(
        MlflowException(
            "API request to endpoint /api/2.0/mlflow/runs/get failed with error code 503 != 200",
            error_code=TEMPORARILY_UNAVAILABLE,
        )
    )
    assert not runs.is_transient(MlflowException("raised here, not by the server"))  # default code is 500 too
    assert runs.is_transient(TrackingError("sqlite3.OperationalError: database is locked"))
    assert not runs.is_transient(
        MlflowException("Changing param values is not allowed", error_code=INVALID_PARAMETER_VALUE)
    )
    assert not runs.is_transient(KeyError("val_log_loss"))
    assert retry_if_transient(None, None, FailedState(refused())) is True
    assert retry_if_transient(None, None, FailedState(ValueError("a bug"))) is False


def test_backoff_outlasts_a_server_restart() -> None:
    """Five retries, exponential with ±20 % jitter: at least ~50 s of waiting in all (docs/reliability.md)."""
    from prefect.utilities.math import lower_clamp_multiple

    assert TRACKING_TASK["retry_delay_seconds"] == [2, 4, 8, 16, 32]
    floor = sum(TRACKING_TASK["retry_delay_seconds"]) * lower_clamp_multiple(1 + TRACKING_TASK["retry_jitter_factor"])
    assert 50 < floor < sum(TRACKING_TASK["retry_delay_seconds"])
