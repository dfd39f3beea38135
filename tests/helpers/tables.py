"""Raw tables as users bring them: an ID, numbers with gaps, string categories with '?' and blanks."""

from __future__ import annotations

import numpy as np
import pandas as pd

CITIES = [f"city-{i:02d}" for i in range(12)]
PLANS = ["basic", "plus", "pro"]
LABEL = "outcome"
POSITIVE = "churn"


def raw_table(rows: int = 1200, seed: int = 0) -> pd.DataFrame:
    """A churn-like table whose label depends on numbers and categories alike.

    ``age`` has gaps, ``spend`` has gaps, ``city`` uses ``?`` for unknown, ``plan`` has
    blank cells; ``customer_id`` is unique per row (an ID, never a feature).
    """
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, rows).astype(float)
    spend = rng.gamma(2.0, 30.0, rows)
    city = rng.choice(CITIES, rows)
    plan = rng.choice(PLANS, rows, p=[0.5, 0.3, 0.2])
    score = (
        -0.04 * (age - 45)
        + 0.02 * (spend - 60)
        + np.where(np.isin(city, CITIES[:4]), 1.2, -0.4)
        + np.select([plan == "basic", plan == "plus"], [0.8, 0.0], -1.0)
        + rng.normal(scale=0.7, size=rows)
    )
    label = np.where(score > np.median(score), POSITIVE, "stay")
    age[rng.random(rows) < 0.08] = np.nan
    spend[rng.random(rows) < 0.05] = np.nan
    city = city.astype(object)
    city[rng.random(rows) < 0.06] = "?"
    plan = plan.astype(object)
    plan[rng.random(rows) < 0.05] = None
    return pd.DataFrame(
        {"customer_id": np.arange(100_000, 100_000 + rows), "age": age, "spend": spend, "city": city, "plan": plan}
    ).assign(**{LABEL: label})
