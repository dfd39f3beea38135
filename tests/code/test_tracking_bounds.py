"""Bounded failure on an unreachable tracking server: HTTP defaults and the retry condition."""

from __future__ import annotations

import pytest
import requests

from flows.retry import retry_unless_unreachable
from wd_pipeline import tracking
from wd_pipeline.errors import TrackingError


class FailedState:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def result(self) -> None:
        raise self.exc


def refused() -> TrackingError:
    try:
        try:
            raise requests.exceptions.ConnectionError("HTTPConnectionPool: Max retries exceeded") from ConnectionRefusedError(111, "Connection refused")
        except requests.exceptions.ConnectionError as exc:
            raise TrackingError("cannot reach") from exc
    except TrackingError as exc:
        return exc


def test_defaults_bound_mlflow_but_never_override_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    tracking.bound_http_requests()
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"


def test_unreachable_reasons() -> None:
    assert tracking.unreachable_reason(refused()) == "connection refused"
    assert tracking.unreachable_reason(requests.exceptions.ConnectTimeout("slow")).startswith("no answer within")
    assert tracking.unreachable_reason(TrackingError("RESOURCE_DOES_NOT_EXIST")) is None


def test_start_tracking_is_not_retried_when_unreachable() -> None:
    assert retry_unless_unreachable(None, None, FailedState(refused())) is False
    assert retry_unless_unreachable(None, None, FailedState(TrackingError("database is locked"))) is True
