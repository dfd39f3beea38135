"""Training progress: counts from epoch callbacks and finished chunks, throttling, and the terminal display."""

from __future__ import annotations

import io
import re

import numpy as np

from wd_pipeline import progress
from wd_pipeline.logs import TerminalWriter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_epochs_are_counted_per_member_and_topped_up_when_a_chunk_finishes() -> None:
    clock = Clock()
    tracker = progress.GridProgress(0, 10, now=clock)
    tracker.add_units(4)
    chunk = progress.chunk_key("l2", 0, [0.0, 1e-3])
    on_epoch = tracker.epoch_callback(chunk)
    clock.now = 3.0
    on_epoch(0, {"loss": np.array([0.9, 0.8]), "val_bce": np.array([0.7, 0.65])})
    on_epoch(1, {"loss": np.array([0.8, 0.7]), "val_bce": np.array([0.6, 0.62])})
    snapshot = tracker.snapshot()
    assert (snapshot.epochs_done, snapshot.epochs_total, snapshot.units_done, snapshot.units_total) == (4, 40, 0, 4)
    assert snapshot.best_val_loss == 0.6
    assert snapshot.remaining == 3.0 * 36 / 4
    # the members stopped early at epoch 2: the chunk's units count whole
    done = tracker.chunk_done(chunk, best_val_loss=0.55)
    assert (done.epochs_done, done.units_done, done.best_val_loss) == (20, 2, 0.55)


def test_a_resumed_unit_trains_no_epochs_but_counts_when_its_chunk_finishes() -> None:
    tracker = progress.GridProgress(2, 5)
    chunk = progress.chunk_key("l2", 1, [0.0, 1e-2])
    tracker.epoch_callback(chunk)(0, {"loss": np.array([0.5])})  # one member left to train
    assert tracker.snapshot().epochs_done == 1
    assert tracker.chunk_done(chunk).epochs_done == 10


def test_the_line_names_units_epochs_time_and_best_loss() -> None:
    snapshot = progress.Snapshot(3, 12, 300, 1200, 65.0, 0.1234)
    assert snapshot.line() == "3/12 units, 300/1200 epochs, 0:01:05 elapsed, ~0:03:15 left, best val loss 0.1234"
    assert progress.Snapshot(0, 2, 0, 10, 1.0, None).line() == "0/2 units, 0/10 epochs, 0:00:01 elapsed, ~… left"


def test_throttled_passes_at_most_one_update_per_period_and_always_the_last() -> None:
    clock, seen = Clock(), []
    throttled = progress.Throttled(seen.append, 5.0, now=clock)
    for second, units_done in [(0, 0), (1, 0), (4, 1), (6, 1), (7, 1), (8, 2)]:
        clock.now = second
        throttled(progress.Snapshot(units_done, 2, units_done, 2, second, None))
    assert [snapshot.elapsed for snapshot in seen] == [0, 6, 8]


def test_a_failing_listener_does_not_stop_training() -> None:
    tracker = progress.GridProgress(1, 1)

    def broken(snapshot: progress.Snapshot) -> None:
        raise RuntimeError("UI unreachable")

    tracker.listeners.append(broken)
    assert tracker.chunk_done(progress.chunk_key("l2", 0, [0.0])).units_done == 1


def test_the_epoch_callback_exists_only_while_a_grid_is_tracked() -> None:
    assert progress.epoch_callback("l2", 0, [0.0]) is None
    with progress.track(1, 3) as tracker:
        progress.epoch_callback("l2", 0, [0.0])(0, {"loss": np.array([0.3])})
        assert tracker.snapshot().epochs_done == 1
    assert progress.active() is None


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gets_no_display_and_no_control_codes() -> None:
    stream, writer = io.StringIO(), TerminalWriter(io.StringIO())
    progress.show_on_terminal(writer, stream)
    try:
        with progress.track(1, 2) as tracker:
            writer.line("l2 λ=0 trained")
            tracker.chunk_done(progress.chunk_key("l2", 0, [0.0]))
    finally:
        progress.show_on_terminal(writer, io.StringIO())
    assert stream.getvalue() == ""
    assert writer.stream.getvalue() == "l2 λ=0 trained\n"


def test_a_terminal_shows_a_live_bar_with_the_lines_above_it() -> None:
    stream, writer = Terminal(), TerminalWriter(io.StringIO())
    progress.show_on_terminal(writer, stream)
    try:
        with progress.track(2, 4) as tracker:
            tracker.epoch_callback(progress.chunk_key("l2", 0, [0.0, 1e-3]))(
                0, {"loss": np.array([0.5, 0.4]), "val_bce": np.array([0.45, 0.41])}
            )
            writer.line("l2 λ=[0.0] trained")  # brackets stay text, not markup
            tracker.chunk_done(progress.chunk_key("l2", 0, [0.0, 1e-3]))
    finally:
        progress.show_on_terminal(writer, io.StringIO())
    assert "\x1b[" in stream.getvalue()  # a live display redraws in place
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())
    assert "l2 λ=[0.0] trained" in shown and "8/8 epochs" in shown and "2/2 units" in shown
    assert writer.stream.getvalue() == "" and writer.sink is None
