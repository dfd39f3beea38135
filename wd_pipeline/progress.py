"""How far the grid's training has got: units and epochs done of the total, time, best validation loss.

Packed training reports every epoch through the callback :func:`epoch_callback` hands out;
the flow reports every finished chunk of units. Whoever shows progress listens: the
terminal display the command line installs (:func:`show_on_terminal`) and the Prefect
artifact the flow keeps. Plain library code: nothing here imports Prefect.

Epochs are counted per packed member: a chunk of three λ values training for 100 epochs is
300 of the total. A member that stops early is credited its remaining epochs when its
chunk finishes, so the count always ends at the total.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TextIO

import numpy as np

from wd_pipeline.logs import TerminalWriter

_log = logging.getLogger(__name__)

EpochCallback = Callable[[int, Mapping[str, Any]], None]
Listener = Callable[["Snapshot"], None]
ChunkKey = tuple[str, int, tuple[float, ...]]


@dataclass(frozen=True)
class Snapshot:
    units_done: int
    units_total: int
    epochs_done: int
    epochs_total: int
    elapsed: float
    best_val_loss: float | None

    @property
    def fraction(self) -> float:
        return self.epochs_done / self.epochs_total if self.epochs_total else 1.0

    @property
    def remaining(self) -> float | None:
        """Seconds left at the pace so far; None before the first epoch."""
        return self.elapsed * (1 - self.fraction) / self.fraction if self.fraction > 0 else None

    def line(self) -> str:
        """The numbers in words, for a line of plain text."""
        remaining = "…" if self.remaining is None else clock(self.remaining)
        best = "" if self.best_val_loss is None else f", best val loss {self.best_val_loss:.4f}"
        return (
            f"{self.units_done}/{self.units_total} units, {self.epochs_done}/{self.epochs_total} epochs, "
            f"{clock(self.elapsed)} elapsed, ~{remaining} left{best}"
        )


def clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class GridProgress:
    """The counts of one grid's training, safe to update from the training threads."""

    def __init__(self, units_total: int, epochs_per_unit: int, *, now: Callable[[], float] = time.monotonic) -> None:
        self.units_total = units_total
        self.epochs_per_unit = epochs_per_unit
        self._now = now
        self._started = now()
        self._lock = threading.Lock()
        self._epochs: dict[ChunkKey, int] = {}
        self._units_done = 0
        self._best: float | None = None
        self.listeners: list[Listener] = []

    def add_units(self, count: int) -> None:
        """More units to train: the grid's total grows as its chunks are handed out."""
        with self._lock:
            self.units_total += count

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                units_done=self._units_done,
                units_total=self.units_total,
                epochs_done=sum(self._epochs.values()),
                epochs_total=self.units_total * self.epochs_per_unit,
                elapsed=self._now() - self._started,
                best_val_loss=self._best,
            )

    def epoch_callback(self, chunk: ChunkKey) -> EpochCallback:
        """What packed training calls after each epoch of ``chunk``: each member (one value per member in
        ``metrics``; units found trained have none) ran one more epoch."""

        def on_epoch(epoch: int, metrics: Mapping[str, Any]) -> None:
            losses = metrics.get("val_bce", metrics.get("bce"))
            members = int(np.size(metrics["loss"]))
            with self._lock:
                self._epochs[chunk] = members * min(epoch + 1, self.epochs_per_unit)
                if losses is not None:
                    lowest = float(np.min(losses))
                    self._best = lowest if self._best is None else min(self._best, lowest)
            self._notify()

        return on_epoch

    def chunk_done(self, chunk: ChunkKey, best_val_loss: float | None = None) -> Snapshot:
        """A chunk's units are finished (trained, or found trained): credit all their epochs."""
        with self._lock:
            self._epochs[chunk] = len(chunk[2]) * self.epochs_per_unit
            self._units_done += len(chunk[2])
            if best_val_loss is not None:
                self._best = best_val_loss if self._best is None else min(self._best, best_val_loss)
        return self._notify()

    def _notify(self) -> Snapshot:
        snapshot = self.snapshot()
        for listener in list(self.listeners):
            try:
                listener(snapshot)
            except Exception:  # showing progress must never stop training
                _log.debug("progress listener failed", exc_info=True)
        return snapshot


class Throttled:
    """Passes a snapshot on at most once every ``seconds``, and always the last one (all units done)."""

    def __init__(self, listener: Listener, seconds: float, *, now: Callable[[], float] = time.monotonic) -> None:
        self.listener, self.seconds, self._now = listener, seconds, now
        self._last: float | None = None
        self._lock = threading.Lock()

    def __call__(self, snapshot: Snapshot) -> None:
        with self._lock:
            due = self._last is None or self._now() - self._last >= self.seconds
            final = snapshot.units_done == snapshot.units_total
            if not (due or final):
                return
            self._last = self._now()
        self.listener(snapshot)


_active: GridProgress | None = None
_terminal: Callable[[GridProgress], Any] | None = None


def active() -> GridProgress | None:
    """The grid being trained in this process, if any (a Dask worker process has none)."""
    return _active


def epoch_callback(mode: str, fold: int, lams: Sequence[float]) -> EpochCallback | None:
    """The callback for packed training of this chunk in this process, or None when nobody tracks it."""
    tracker = _active
    return tracker.epoch_callback(chunk_key(mode, fold, lams)) if tracker is not None else None


def chunk_key(mode: str, fold: int, lams: Sequence[float]) -> ChunkKey:
    return (mode, fold, tuple(float(lam) for lam in lams))


@contextmanager
def track(units_total: int, epochs_per_unit: int) -> Iterator[GridProgress]:
    """Make a grid's progress the process's active one; shown on the terminal when one is installed."""
    global _active
    tracker = GridProgress(units_total, epochs_per_unit)
    _active = tracker
    try:
        if _terminal is None:
            yield tracker
        else:
            with _terminal(tracker):
                yield tracker
    finally:
        _active = None


def show_on_terminal(writer: TerminalWriter, stream: TextIO) -> None:
    """Show every grid trained in this process on ``stream``: a live display on a terminal, else nothing
    beyond the flow's own lines (plain text without control codes, fit for a pipe or a CI log)."""
    global _terminal
    _terminal = (lambda tracker: live_display(tracker, writer, stream)) if stream.isatty() else None


@contextmanager
def live_display(tracker: GridProgress, writer: TerminalWriter, stream: TextIO) -> Iterator[None]:
    """A Rich progress bar under the story's lines while ``tracker``'s grid trains (fits 80 columns)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=stream)
    bar = Progress(
        BarColumn(bar_width=10),
        MofNCompleteColumn(),
        TextColumn("epochs · {task.fields[units]} units ·"),
        TimeElapsedColumn(),
        TextColumn("·"),
        TimeRemainingColumn(),
        TextColumn("left · best {task.fields[best]}"),
        console=console,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    first = tracker.snapshot()
    task = bar.add_task("grid", total=first.epochs_total, units=f"0/{first.units_total}", best="–")

    def show(snapshot: Snapshot) -> None:
        best = "–" if snapshot.best_val_loss is None else f"{snapshot.best_val_loss:.4f}"
        units = f"{snapshot.units_done}/{snapshot.units_total}"
        bar.update(task, total=snapshot.epochs_total, completed=snapshot.epochs_done, units=units, best=best)

    tracker.listeners.append(show)
    writer.sink = lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True)
    bar.start()
    try:
        yield
    finally:
        bar.stop()
        writer.sink = None
        tracker.listeners.remove(show)
