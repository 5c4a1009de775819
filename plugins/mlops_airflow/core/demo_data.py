"""Deterministic demo data: daily batches for the ``credit_default`` binary-classification model.

Everything is generated offline from a seed. Switches inject the faults a continuous-training system must
survive: covariate drift (``feature_shift``), applicants made alike (``toward_center``: a covariate shift
towards the decision boundary, the concept unchanged), a change of the label's dependence on the features
(``concept_shift``), and corrupt batches (``corrupt``: one of :data:`CORRUPTIONS`). :func:`shift_on` spreads a
shift over days: a step, a gradual ramp or a seasonal wave (``--drift-shape``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

EMPLOYMENT = ("salaried", "self_employed", "unemployed", "retired")
REGIONS = ("north", "south", "east", "west")
HOME = ("rent", "own", "mortgage")
CORRUPTIONS = (
    "missing_column",
    "wrong_dtype",
    "nulls_in_required",
    "out_of_range",
    "empty",
    "not_tabular",
    "unknown_category",
)
DEFAULT_START = dt.date(2026, 1, 1)
DRIFT_SHAPES = ("step", "gradual", "seasonal")
#: Medians of the unshifted population's numeric features (of the distributions they are drawn from) and its
#: most common categories: where ``toward_center`` pulls applicants.
POPULATION_CENTER: dict[str, float | str] = {
    "age": 42.0,
    "income": 40134.84,  # exp(10.6)
    "debt_ratio": 0.3021,  # gamma(2, 0.18)
    "credit_lines": 6.0,  # Poisson(6)
    "late_payments": 0.0,  # Poisson(0.6)
    "utilization": 0.3138,  # beta(2, 4)
    "employment_type": "salaried",
    "region": "north",
    "home_ownership": "rent",
}
_ROUNDING = {"age": 0, "income": 2, "debt_ratio": 4, "credit_lines": 0, "late_payments": 0, "utilization": 4}


def shift_on(day: int, *, shape: str = "step", start: int = 0, length: int = 14) -> float:
    """The share (0 to 1) of a shift that applies on ``day``; multiply a ``feature_shift`` or
    ``concept_shift`` by it.

    ``step``: 0 before ``start``, 1 from ``start``. ``gradual``: a linear ramp from 0 on day ``start`` to 1 on
    day ``start + length``, then 1. ``seasonal``: 0 before ``start``, then a wave of period ``length`` days,
    ``(1 - cos(2 pi (day - start) / length)) / 2`` (0 on ``start``, 1 half a period later, 0 again after one).
    """
    import math

    if shape not in DRIFT_SHAPES:
        raise ValueError(f"drift shape {shape!r}: choose one of {DRIFT_SHAPES}")
    if length < 1:
        raise ValueError(f"drift length {length}: must be at least 1 day")
    if day < start:
        return 0.0
    if shape == "step":
        return 1.0
    if shape == "gradual":
        return min(1.0, (day - start) / length)
    return (1.0 - math.cos(2.0 * math.pi * (day - start) / length)) / 2.0


def generate_batch(
    day: int,
    *,
    n_rows: int = 1000,
    seed: int = 42,
    feature_shift: float = 0.0,
    concept_shift: float = 0.0,
    toward_center: float = 0.0,
    start: dt.date = DEFAULT_START,
) -> pd.DataFrame:
    """One day of loan applications with their observed default label.

    :param day: day index from ``start``; the same ``(day, seed)`` always gives the same frame.
    :param feature_shift: 0 = none; 1 = strong covariate drift (poorer, more indebted applicants).
    :param concept_shift: 0 = none; 1 = the label depends on the features in a different way.
    :param toward_center: 0 = none; between 0 and 1: each numeric feature pulled that share of the way towards
        its :data:`POPULATION_CENTER` median, and that share of the applicants (at random) given the most common
        employment type, region and home ownership. The labels are drawn from the same concept
        (:func:`default_logit`) on the moved features: applicants become alike, near the decision boundary, and a
        model's real ROC AUC drops while P(default | features) is unchanged. 0 gives the frame of before.
    """
    import math

    import numpy as np
    import pandas as pd

    pull = float(toward_center)
    if not (math.isfinite(pull) and 0.0 <= pull <= 1.0):
        raise ValueError(
            f"demo batch day {day}: toward_center {toward_center!r} must be a number between 0 (no pull) and 1 "
            "(every applicant at the population median)"
        )
    rng = np.random.default_rng([seed, day])
    n = n_rows
    s = float(feature_shift)
    age = rng.normal(42 - 4 * s, 12, n).clip(18, 90).round()
    income = np.exp(rng.normal(10.6 - 0.35 * s, 0.45, n)).round(2)
    debt_ratio = rng.gamma(2.0 + 1.5 * s, 0.18, n).clip(0, 5).round(4)
    credit_lines = rng.poisson(6 + 2 * s, n).clip(0, 40)
    late_payments = rng.poisson(0.6 + 0.8 * s, n).clip(0, 25)
    utilization = rng.beta(2 + 2 * s, 4, n).clip(0, 1.5).round(4)
    emp_p = np.array([0.62 - 0.2 * s, 0.18, 0.08 + 0.15 * s, 0.12 + 0.05 * s])
    employment = rng.choice(EMPLOYMENT, n, p=emp_p / emp_p.sum())
    region_p = np.array([0.3, 0.25 + 0.2 * s, 0.25, 0.2])
    region = rng.choice(REGIONS, n, p=region_p / region_p.sum())
    home = rng.choice(HOME, n, p=[0.4, 0.25, 0.35])
    features = pd.DataFrame(
        {
            "age": age,
            "income": income,
            "debt_ratio": debt_ratio,
            "credit_lines": credit_lines.astype("int64"),
            "late_payments": late_payments.astype("int64"),
            "utilization": utilization,
            "employment_type": employment,
            "region": region,
            "home_ownership": home,
        }
    )
    if pull > 0.0:
        features = _pull_to_center(features, pull, np.random.default_rng([seed, day, 1]))

    # The noise is drawn after every feature, as before ``toward_center`` existed: same seed, same frame.
    logit = default_logit(features, concept_shift) + rng.normal(0, 0.3, n)
    default = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")

    frame = pd.concat(
        [
            pd.DataFrame(
                {
                    "application_id": [f"{day:04d}-{i:05d}" for i in range(n)],
                    "event_date": pd.Timestamp(start + dt.timedelta(days=day)),
                }
            ),
            features,
        ],
        axis=1,
    ).assign(default=default)
    # Realistic gaps: income is often not reported, employment sometimes.
    frame.loc[rng.random(n) < 0.06, "income"] = np.nan
    frame.loc[rng.random(n) < 0.03, "employment_type"] = None
    return frame


def default_logit(features: pd.DataFrame, concept_shift: float = 0.0) -> Any:
    """The concept: log-odds of default given an applicant's features, before the generator's N(0, 0.3) noise.

    ``concept_shift`` 0 = the feed's usual concept; 1 = the label depends on the features in a different way.
    """
    import numpy as np

    c = float(concept_shift)
    utilization = features["utilization"].to_numpy(dtype=float)
    employment = features["employment_type"].to_numpy()
    return (
        -1.6
        + 4.5 * (1 - c) * (utilization - 0.35)
        + 4.0 * c * (0.45 - utilization)
        + 1.8 * (features["debt_ratio"].to_numpy(dtype=float) - 0.4)
        + 0.75 * features["late_payments"].to_numpy(dtype=float)
        - 1.6 * (np.log(features["income"].to_numpy(dtype=float)) - 10.6)
        - 0.03 * (features["age"].to_numpy(dtype=float) - 42)
        + np.select(
            [employment == "unemployed", employment == "self_employed", employment == "retired"],
            [1.4 + 0.8 * c, 0.5 + 1.5 * c, -0.2],
            0.0,
        )
        + np.where(features["home_ownership"].to_numpy() == "own", -0.5, 0.0)
        + np.where(features["region"].to_numpy() == "south", 0.3 + 1.2 * c, 0.0)
    )


def _pull_to_center(features: pd.DataFrame, pull: float, rng: Any) -> pd.DataFrame:
    """Each numeric feature ``pull`` of the way to its population median (rounded and typed as drawn); a share
    ``pull`` of the rows, drawn from ``rng``, given the most common category of each categorical feature."""
    out = features.copy()
    for column, digits in _ROUNDING.items():
        center = float(POPULATION_CENTER[column])
        moved = (center + (1.0 - pull) * (out[column].to_numpy(dtype=float) - center)).round(digits)
        out[column] = moved.astype(out[column].dtype)
    for column in ("employment_type", "region", "home_ownership"):
        out.loc[rng.random(len(out)) < pull, column] = POPULATION_CENTER[column]
    return out


def corrupt_batch(frame: pd.DataFrame, kind: str, *, seed: int = 0) -> pd.DataFrame | bytes:
    """Damage a batch the way real feeds break. ``not_tabular`` returns bytes that are no CSV/Parquet."""
    import numpy as np

    rng = np.random.default_rng(seed)
    bad = frame.copy()
    if kind == "missing_column":
        return bad.drop(columns=["utilization"])
    if kind == "wrong_dtype":
        bad["income"] = bad["income"].map(lambda v: "n/a" if v != v else f"{v:,.2f} EUR")
        return bad
    if kind == "nulls_in_required":
        bad.loc[rng.random(len(bad)) < 0.3, "age"] = np.nan
        return bad
    if kind == "out_of_range":
        bad.loc[rng.random(len(bad)) < 0.1, "utilization"] = 7.5
        return bad
    if kind == "empty":
        return bad.iloc[0:0]
    if kind == "unknown_category":
        bad.loc[rng.random(len(bad)) < 0.2, "region"] = "atlantis"
        return bad
    if kind == "not_tabular":
        return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(rng.integers(0, 256, 512, dtype="uint8"))
    raise ValueError(f"unknown corruption {kind!r}; choose one of {CORRUPTIONS}")


def batch_file_name(day: int, fmt: str = "csv", start: dt.date = DEFAULT_START) -> str:
    return f"batch_{(start + dt.timedelta(days=day)).isoformat()}.{fmt}"


def encode_batch(
    day: int, *, fmt: str = "csv", corrupt: str | None = None, start: dt.date = DEFAULT_START, **kwargs: Any
) -> bytes:
    """Day ``day`` as the bytes of its batch file (CSV or Parquet), corrupted if asked."""
    import io

    frame = generate_batch(day, start=start, **kwargs)
    payload: Any = frame if corrupt is None else corrupt_batch(frame, corrupt, seed=day)
    if isinstance(payload, bytes):
        return payload
    buffer = io.BytesIO()
    if fmt == "csv":
        payload.to_csv(buffer, index=False)
    else:
        payload.to_parquet(buffer, index=False)
    return buffer.getvalue()


def write_batch(
    directory: Path | str, day: int, *, fmt: str = "csv", start: dt.date = DEFAULT_START, **kwargs: Any
) -> Path:
    """Generate day ``day`` and write it to the local ``directory`` (created if needed); returns the file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / batch_file_name(day, fmt, start)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(encode_batch(day, fmt=fmt, start=start, **kwargs))
    tmp.replace(path)  # a reader never sees a half-written batch
    return path


def upload_batch(url: str, day: int, *, fmt: str = "csv", start: dt.date = DEFAULT_START, **kwargs: Any) -> str:
    """Generate day ``day`` and put it under ``url`` (``s3://bucket/landing/credit_default``; credentials and
    endpoint from the environment, e.g. ``AWS_ENDPOINT_URL`` for MinIO). A put is atomic: no half batch."""
    fs, root = _filesystem(url)
    fs.makedirs(root, exist_ok=True)  # a folder for file://, nothing for an object store
    name = batch_file_name(day, fmt, start)
    fs.pipe_file(f"{root.rstrip('/')}/{name}", encode_batch(day, fmt=fmt, start=start, **kwargs))
    return f"{url.rstrip('/')}/{name}"


def _is_url(directory: Path | str) -> bool:
    return isinstance(directory, str) and "://" in directory


def _filesystem(url: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(url)


def write_batches(directory: Path | str, days: range | list[int], **kwargs: Any) -> list[Path]:
    return [write_batch(directory, day, **kwargs) for day in days]


def next_day(directory: Path | str, start: dt.date = DEFAULT_START) -> int:
    """The day after the newest batch in ``directory`` (a path or URL; 0 when it holds none)."""
    if _is_url(directory):
        fs, root = _filesystem(str(directory))
        names = [name.rsplit("/", 1)[-1] for name in fs.glob(f"{root.rstrip('/')}/batch_*.*")]
    else:
        names = [path.name for path in Path(directory).glob("batch_*.*")]
    dates = []
    for name in names:
        try:
            dates.append(dt.date.fromisoformat(name.removeprefix("batch_").split(".", 1)[0]))
        except ValueError:
            continue
    return (max(dates) - start).days + 1 if dates else 0


def main(argv: list[str] | None = None) -> None:
    """``python -m mlops_airflow.core.demo_data DIR --days 15``: write demo batches (DIR: a path or s3:// URL)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("directory")
    parser.add_argument("--days", type=int, default=15)
    parser.add_argument("--first-day", type=int, default=0)
    parser.add_argument("--next", action="store_true", help="start the day after the newest batch in DIR")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    parser.add_argument("--feature-shift", type=float, default=0.0)
    parser.add_argument("--concept-shift", type=float, default=0.0)
    parser.add_argument(
        "--toward-center", type=float, default=0.0, help="0-1: applicants pulled towards the population median"
    )
    parser.add_argument("--corrupt", choices=CORRUPTIONS, default=None)
    parser.add_argument(
        "--drift-shape",
        choices=DRIFT_SHAPES,
        default=None,
        help="spread --feature-shift, --concept-shift and --toward-center over the days (see shift_on); "
        "default: every day alike",
    )
    parser.add_argument("--drift-start", type=int, default=0, help="day index the shift starts (--drift-shape)")
    parser.add_argument("--drift-length", type=int, default=14, help="ramp length or wave period in days")
    args = parser.parse_args(argv)
    first = next_day(args.directory) if args.next else args.first_day
    write: Any = upload_batch if _is_url(args.directory) else write_batch
    options = {
        "n_rows": args.rows,
        "fmt": args.format,
        "feature_shift": args.feature_shift,
        "concept_shift": args.concept_shift,
        "corrupt": args.corrupt,
    }
    paths = []
    for day in range(first, first + args.days):
        share = (
            1.0
            if args.drift_shape is None
            else shift_on(day, shape=args.drift_shape, start=args.drift_start, length=args.drift_length)
        )
        shifted = {
            "feature_shift": args.feature_shift * share,
            "concept_shift": args.concept_shift * share,
            "toward_center": args.toward_center * share,
        }
        paths.append(write(args.directory, day, **(options | shifted)))
    print(f"wrote {len(paths)} batches to {args.directory}")


if __name__ == "__main__":
    main()


def write_diabetes_batches(directory: Path | str, days: int = 15, start: dt.date = DEFAULT_START) -> list[Path]:
    """scikit-learn's bundled diabetes data (442 patients, no download) as ``days`` daily CSV batches.

    The regression example: ``progression`` (disease progression after one year) from ten baseline
    measurements; ``sex`` is written as a category.
    """
    import numpy as np
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(scaled=False, as_frame=True).frame.rename(columns={"target": "progression"})
    frame["sex"] = frame["sex"].map({1.0: "sex_1", 2.0: "sex_2"})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for day, rows in enumerate(np.array_split(np.arange(len(frame)), days)):
        chunk = frame.iloc[rows].assign(event_date=str(start + dt.timedelta(days=day)))
        path = directory / batch_file_name(day, "csv", start)
        chunk.to_csv(path, index=False)
        paths.append(path)
    return paths
