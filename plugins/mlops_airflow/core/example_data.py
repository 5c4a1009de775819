"""Offline data for the example models of ``include/examples/`` (nothing is downloaded).

* ``product_tier`` (multiclass, string labels ``basic``/``plus``/``premium``): a synthetic shop customer with
  numeric, categorical, boolean and datetime features; ``shift`` moves the class boundaries (concept drift),
  ``noise`` blurs them (a worse world to learn from).
* ``tumour_diagnosis`` (binary, string labels ``malignant``/``benign``): scikit-learn's bundled breast cancer
  data, split into daily batches.
* ``fraud_alert`` (binary, imbalanced, labels ``no``/``yes``, about 6 % positives): a synthetic card payment.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

START = dt.date(2026, 1, 1)
TIERS = ["basic", "plus", "premium"]


def _write(directory: Path | str, frames: list[pd.DataFrame], start: dt.date, offset: int = 0) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        day = start + dt.timedelta(days=offset + i)
        path = directory / f"batch_{day.isoformat()}.csv"
        frame.assign(event_date=day.isoformat()).to_csv(path, index=False)
        paths.append(path)
    return paths


def product_tier_batch(rows: int, seed: int, *, shift: float = 0.0, noise: float = 0.6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    spend = rng.lognormal(4.0, 0.6, rows)
    visits = rng.poisson(6, rows).astype(float)
    region = rng.choice(["north", "south", "east", "west"], rows, p=[0.4, 0.3, 0.2, 0.1])
    member = rng.random(rows) < 0.35
    signup = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 5 * 365, rows), unit="D")
    tenure_years = (pd.Timestamp("2026-01-01") - signup).days.to_numpy() / 365.0
    latent = (
        0.9 * np.log(spend)
        + 0.12 * visits
        + 0.9 * member
        + 0.15 * tenure_years
        + np.where(region == "west", 0.5, 0.0)
        + rng.normal(0, noise, rows)
    )
    cuts = np.array([4.6, 5.5]) + shift
    tier = np.asarray(TIERS, dtype=object)[np.searchsorted(cuts, latent)]
    spend[rng.random(rows) < 0.03] = np.nan  # a few missing values, imputed by the pipeline
    return pd.DataFrame(
        {
            "monthly_spend": spend.round(2),
            "visits": visits,
            "region": region,
            "is_member": member,
            "signup_date": signup.strftime("%Y-%m-%d"),
            "tier": tier,
        }
    )


def write_product_tier_batches(
    directory: Path | str, days: range | list[int], rows: int = 300, **kwargs: Any
) -> list[Path]:
    """One CSV per day in ``days`` (seeded by the day, so the same day is always the same batch)."""
    frames = [product_tier_batch(rows, seed=1000 + day, **kwargs) for day in days]
    return _write(directory, frames, START, offset=min(days))


def write_tumour_batches(directory: Path | str, days: int = 8) -> list[Path]:
    """scikit-learn's bundled breast cancer data (569 rows) as ``days`` batches; labels as words."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    frame["diagnosis"] = np.where(data.target == 0, "malignant", "benign")
    frame = frame.drop(columns="target").sample(frac=1.0, random_state=0).reset_index(drop=True)
    frames = [frame.iloc[idx] for idx in np.array_split(np.arange(len(frame)), days)]
    return _write(directory, frames, START)


def fraud_batch(rows: int, seed: int, positive_rate: float = 0.06) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.5, 1.0, rows)
    hour = rng.integers(0, 24, rows).astype(float)
    foreign = rng.random(rows) < 0.15
    channel = rng.choice(["pos", "online", "atm"], rows, p=[0.6, 0.3, 0.1])
    logit = -6.0 + 0.8 * np.log(amount) - 0.15 * np.abs(hour - 3) + 2.2 * foreign + 1.4 * (channel == "online")
    logit += np.log(positive_rate / 0.06)
    fraud = rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))
    return pd.DataFrame(
        {
            "amount": amount.round(2),
            "hour": hour,
            "foreign": foreign,
            "channel": channel,
            "noise": rng.normal(0, 1, rows),
            "is_fraud": np.where(fraud, "yes", "no"),
        }
    )


def write_fraud_batches(directory: Path | str, days: range | list[int], rows: int = 600) -> list[Path]:
    frames = [fraud_batch(rows, seed=2000 + day) for day in days]
    return _write(directory, frames, START, offset=min(days))
