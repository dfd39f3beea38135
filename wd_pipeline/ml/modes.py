"""The regularisation modes and what a grid value means in each.

A grid point is (mode, value). For ``l2`` and ``decoupled`` the value is the weight-decay
coefficient λ, drawn from ``--grid``; for ``dropout`` it is the dropout rate p, drawn from
``--dropout-grid``, and no weight penalty applies. In every mode the larger value is the more
regularised, simpler model, so the one-SE rule backs off towards larger values alike.

Value 0 is the same model in every mode (no penalty, no dropout): it is trained once and
shared (see ``training.effective_mode``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wd_pipeline.config import format_lambda

if TYPE_CHECKING:
    from wd_pipeline.config import PipelineConfig

DROPOUT = "dropout"
WEIGHT_DECAY_MODES = ("l2", "decoupled")
ALL_MODES = (*WEIGHT_DECAY_MODES, DROPOUT)


def is_dropout(mode: str) -> bool:
    return mode == DROPOUT


def grid_of(config: PipelineConfig, mode: str) -> list[float]:
    """The values ``mode`` trains: dropout rates for dropout, λ for the weight-decay modes."""
    return list(config.dropout_grid) if is_dropout(mode) else list(config.grid)


def grid_flag(mode: str) -> str:
    """The command-line flag that sets ``mode``'s grid, for messages that ask to widen it."""
    return "--dropout-grid" if is_dropout(mode) else "--grid"


def value_name(mode: str) -> str:
    """What a grid value is called in tags and params: ``rate`` or ``lambda``."""
    return "rate" if is_dropout(mode) else "lambda"


def value_symbol(mode: str) -> str:
    return "p" if is_dropout(mode) else "λ"


def format_value(mode: str, value: float) -> str:
    """A grid value as people read it: ``0.2`` for a rate, ``1e-03`` for λ."""
    return f"{value:g}" if is_dropout(mode) else format_lambda(value)


def point_label(mode: str, value: float) -> str:
    """``dropout p=0.2`` or ``l2 λ=1e-03``."""
    return f"{mode} {value_symbol(mode)}={format_value(mode, value)}"


def dropout_rate(mode: str, value: float) -> float:
    """The dropout rate of a grid point (0 outside dropout mode)."""
    return float(value) if is_dropout(mode) else 0.0


def weight_decay(mode: str, value: float) -> float:
    """The λ of a grid point (0 in dropout mode)."""
    return 0.0 if is_dropout(mode) else float(value)
