"""Where a command's log records go: the run's story to the terminal, everything to the log file.

The terminal gets what a person follows a run by: the lines the project's own code logs at
INFO (one per step), warnings, and nothing else. Prefect's per-task state lines, DEBUG
records, tracebacks and library warnings go to ``<work folder>/wd-pipeline.log`` only (and
Prefect's lines to its UI as ever). TensorFlow writes its C++ banners straight to file
descriptor 2, past Python's logging, while it is imported: :func:`import_tensorflow` imports it
with that descriptor pointed at the log file. ``--verbose`` leaves the terminal as it was.

Plain library code: no Prefect import; Prefect's handlers are recognised by their class name.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from wd_pipeline.config import PROJECT_ROOT

LOG_FILE = "wd-pipeline.log"
LOG_FILE_ENV = "WD_PIPELINE_LOG_FILE"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The project's own code: records logged here at INFO are the run's story.
STORY_ROOTS = tuple(str(PROJECT_ROOT / folder) + os.sep for folder in ("flows", "wd_pipeline"))
# Prefect's engine reports every run's state under these names; a failure reaches the
# terminal once, as the command's own error line.
ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
# Libraries whose INFO records are one line per HTTP request or file: the log file keeps their warnings.
# Libraries whose warnings are for their developers (deprecations, retries): the log file keeps them.
QUIET_ON_TERMINAL = ("mlflow", "tensorflow", "absl", "keras", "urllib3", "alembic")
CHATTY = ("httpx", "httpcore", "urllib3", "asyncio", "alembic", "aiosqlite", "docket", "fakeredis")


def quiet_environment(*, verbose: bool) -> None:
    """Variables read by TensorFlow, and by child processes (Dask workers), before they log anything."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # the client's side of the same: no first-run notice on a terminal
    # Prefect's ephemeral API gives up after 20 s; a busy 2-core machine needs longer.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # else its records bypass ours to stderr


def is_story(record: logging.LogRecord) -> bool:
    """Whether a record belongs on the terminal of a run that is not ``--verbose``."""
    if record.exc_info is not None or record.name == "py.warnings":
        return False
    if record.pathname.startswith(STORY_ROOTS):  # flows log through Prefect's run loggers
        return record.levelno >= logging.INFO
    if record.name.startswith(ENGINE_LOGGERS):
        return record.levelno == logging.WARNING  # retries; states and failures are told elsewhere
    if record.name.split(".", 1)[0] in QUIET_ON_TERMINAL:
        return record.levelno >= logging.ERROR
    return record.levelno >= logging.WARNING


class StoryFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return is_story(record)


class TerminalHandler(logging.Handler):
    """The story, one line a record: ``HH:MM:SS message``, warnings marked, through ``write``.

    ``write`` is the terminal's one writer (the progress display's), so that a line logged
    while the display is live lands above it instead of through it.
    """

    def __init__(self, write: TerminalWriter) -> None:
        super().__init__(logging.INFO)
        self.write = write
        self.addFilter(StoryFilter())
        self.setFormatter(logging.Formatter("%(asctime)s  %(message)s", datefmt="%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if record.levelno >= logging.WARNING:
                line = line.replace("  ", f"  {record.levelname.lower()}: ", 1)
            self.write.line(line)
        except Exception:
            self.handleError(record)


class TerminalWriter:
    """Writes whole lines to a stream; the progress display swaps in its own while it is live."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self.sink: Callable[[str], None] | None = None

    @property
    def stream(self) -> TextIO:
        """The given stream, else ``sys.stderr`` as it is now (a test may have replaced it)."""
        return self._stream or sys.stderr

    def line(self, text: str) -> None:
        if self.sink is not None:
            self.sink(text)
            return
        self.stream.write(text + "\n")
        self.stream.flush()


TERMINAL = TerminalWriter()


def configure(work_dir: Path, *, verbose: bool) -> Path:
    """Send every record to the log file; without ``verbose``, only the story to the terminal.

    Call after Prefect has set its logging up (it skips its console when the root logger
    already has a handler). Returns the log file's path.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = (work_dir / LOG_FILE).resolve()
    os.environ[LOG_FILE_ENV] = str(log_path)
    if not verbose:
        _quiet_dask_workers()
    file_handler = logging.FileHandler(log_path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
    root = logging.getLogger()
    if not verbose:
        _replace_consoles(TerminalHandler(TERMINAL))
        logging.captureWarnings(True)
        warnings.simplefilter("default")
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    root.setLevel(logging.INFO)
    root.addHandler(file_handler)
    logging.getLogger("wd_pipeline").setLevel(logging.DEBUG)
    return log_path


def _replace_consoles(terminal: logging.Handler) -> None:
    """Swap every console handler Prefect installed (root's and the few loggers that do not propagate)."""
    root = logging.getLogger()
    loggers = [root, *(logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict))]
    for logger in loggers:
        consoles = [handler for handler in logger.handlers if type(handler).__name__ == "PrefectConsoleHandler"]
        for handler in consoles:
            logger.removeHandler(handler)
        if logger is root or (consoles and not logger.propagate):
            logger.addHandler(terminal)
        if logger.name.startswith("mlflow") and not logger.propagate:  # configured by an earlier import
            logger.handlers = []
            logger.propagate = True


def _quiet_dask_workers() -> None:
    """Local Dask workers (spawned with this environment) run :func:`dask_setup` as they start."""
    os.environ.setdefault("DASK_DISTRIBUTED__WORKER__PRELOAD", f'["{__name__}"]')
    if "dask" in sys.modules:
        import dask

        dask.config.refresh()


def dask_setup(worker: object) -> None:
    """Dask's preload hook: a worker loads TensorFlow as it starts, not in its first task.

    A worker of a local cluster inherits the run's log file and sends TensorFlow's banners
    there. A worker started on a host of its own (``dask worker ADDRESS --preload
    wd_pipeline.logs``) knows no such file: its own log, where its operator looks, keeps them.
    """
    log_path = os.environ.get(LOG_FILE_ENV)
    if log_path:
        import_tensorflow(log_path)
        return
    import keras  # noqa: F401
    import tensorflow  # noqa: F401


@contextmanager
def native_output_to(log_path: Path | str | None) -> Iterator[None]:
    """Point file descriptor 2 at ``log_path`` (appending; None: the null device) for the block.

    What C++ code writes there (TensorFlow's and absl's banners while TensorFlow loads) then
    lands in the log file; Python's own ``sys.stderr`` is flushed first and restored after.
    """
    sys.stderr.flush()
    target = os.open(str(log_path) if log_path else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = os.dup(2)
    os.dup2(target, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


def import_tensorflow(log_path: Path | str | None) -> None:
    """Import TensorFlow and Keras with their load-time C++ output sent to ``log_path``."""
    with native_output_to(log_path):
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
