"""Class weights for the training loss: ``--class-weight balanced`` against a rare positive class.

Balanced weights are w_c = n / (2 · n_c), computed on the rows a model trains on (a fold's
training rows, or all of them for the refit), so each class carries half of the loss and
the held-out rows never leak into them. Validation and test metrics stay unweighted: they
measure the model, not the objective it was fitted with.
"""

from __future__ import annotations

import numpy as np

CLASSES = (0, 1)


def balanced(labels: np.ndarray) -> dict[int, float]:
    """w_c = n / (2 n_c) for the two classes of ``labels`` (0/1)."""
    flat = np.asarray(labels).astype(int).ravel()
    counts = {c: int(np.sum(flat == c)) for c in CLASSES}
    missing = [c for c, count in counts.items() if count == 0]
    if missing:
        raise ValueError(f"balanced class weights need rows of both classes; class {missing[0]} has none")
    return {c: len(flat) / (len(CLASSES) * count) for c, count in counts.items()}


def for_setting(setting: str, labels: np.ndarray) -> dict[int, float] | None:
    """The class weights ``--class-weight`` asks for on these training labels; None for ``none``."""
    if setting == "none":
        return None
    if setting == "balanced":
        return balanced(labels)
    raise ValueError(f"unknown class weight {setting!r}; use none or balanced")
