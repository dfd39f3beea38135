"""Errors a user can cause and fix.

Every error raised on purpose by the library derives from :class:`PipelineError`, so the
CLI can print its message without a traceback and Prefect can end the flow run FAILED
with the same words. Anything else escaping the library is a bug, not bad input.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: the message names the problem and how to fix it."""


class DataError(PipelineError):
    """The data source is missing, unreadable or does not fit the configuration."""


class ConfigError(PipelineError):
    """A setting is invalid or inconsistent with another one."""


class TrackingError(PipelineError):
    """The MLflow tracking store or model registry cannot be used."""


class StackError(PipelineError):
    """The local server stack cannot be started, found or stopped."""


class PortInUseError(StackError):
    """A port the stack needs is already taken by another process."""


class ServiceStartError(StackError):
    """A server of the stack exited or did not become healthy in time."""


class StackNotRunningError(StackError):
    """A command needs the stack (or a server URL) but none is recorded or reachable."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type name if it has none), for one-line errors."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
