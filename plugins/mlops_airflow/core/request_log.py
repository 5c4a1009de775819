"""The model server's request log: what production scored, as Parquet the monitor and live metrics read.

Layout, under ``MLOPS_STORAGE_BASE``::

    <model>/serving/date=YYYY-MM-DD/part-<HHMMSS>-<random>.parquet

One row per scored input row: ``request_id``, ``row`` (its position in the request), ``served_at`` (UTC),
``model_version``, ``role`` (``champion``, or ``challenger`` for a shadow answer to the same request),
``threshold`` (the binary decision threshold the version answered with), the model's input columns as the
model received them, and the model's answer (``prediction`` and one ``proba_<class>`` per class). Under
``serving.out_of_domain: flag`` a champion row also carries ``out_of_domain``: what of it lies outside the
spec's domain (``"region: 'atlantis' not in categories [...]"``, several joined by ``"; "``), null for a row
inside it; :func:`out_of_domain_rows` counts them.

A part file appears whole or not at all: local files are written under a hidden name and renamed, object
stores write an object at once; readers skip names starting with ``.``. Every part of a batch is encoded
before the first is written: rows Parquet cannot hold raise :class:`UnloggableRowsError` and nothing is
written.

Labels that arrive later are joined by ``request_id`` (and ``row`` when a request held several rows):
:func:`live_metrics` turns them into the metrics of each served version, and the agreement of the shadow
challenger with the champion. A request id a client sent with several requests matches one label to several
answers: those rows are left out and counted as ambiguous, never scored against the wrong answer.
"""

from __future__ import annotations

import datetime as dt
import io
import secrets
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from mlops_airflow.core.data import as_path
from mlops_airflow.core.errors import MlopsError, RowsError
from mlops_airflow.core.spec import ModelSpec

CHAMPION_ROLE = "champion"
CHALLENGER_ROLE = "challenger"
#: Columns every log row carries besides the model's inputs and answer.
META_COLUMNS = ("request_id", "row", "served_at", "model_version", "role", "threshold")
DATE_PREFIX = "date="
#: Champion rows outside the spec's domain, under ``serving.out_of_domain: flag`` (text, null inside it).
OUT_OF_DOMAIN_COLUMN = "out_of_domain"


class UnloggableRowsError(MlopsError, ValueError):
    """Rows that cannot be written as Parquet (their data, not the storage, is at fault)."""


def encode_part(frame: pd.DataFrame) -> bytes:
    """``frame`` as Parquet bytes, or :class:`UnloggableRowsError` naming why it cannot be."""
    import pyarrow as pa

    buffer = io.BytesIO()
    try:
        frame.reset_index(drop=True).to_parquet(buffer, index=False)
    except (pa.ArrowException, ValueError, TypeError) as err:  # UnicodeEncodeError is a ValueError
        raise UnloggableRowsError(f"{type(err).__name__}: {err}"[:500]) from err
    return buffer.getvalue()


def serving_dir(storage_base: Any, model: str) -> Any:
    """``<storage_base>/<model>/serving`` as a path object (a URI string, a path or an ``ObjectStoragePath``)."""
    return as_path(storage_base) / model / "serving"


def write_part(storage_base: Any, model: str, frame: pd.DataFrame) -> list[str]:
    """Write log rows (one part file per day of ``served_at``); returns the files written.

    :raises UnloggableRowsError: rows Parquet cannot hold (nothing is written).
    """
    if frame.empty:
        return []
    root = serving_dir(storage_base, model)
    days = frame["served_at"].dt.strftime("%Y-%m-%d")
    parts = {day: encode_part(rows) for day, rows in frame.groupby(days, sort=True)}
    written = []
    stamp = dt.datetime.now(dt.UTC).strftime("%H%M%S")
    for day, data in parts.items():
        folder = root / f"{DATE_PREFIX}{day}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{stamp}-{secrets.token_hex(6)}.parquet"
        target = folder / name
        if getattr(target, "protocol", "file") in ("file", "local", "") or "://" not in str(target):
            hidden = folder / f".{name}.tmp"
            hidden.write_bytes(data)
            hidden.rename(target)
        else:
            target.write_bytes(data)
        written.append(str(target))
    return written


def log_dates(storage_base: Any, model: str) -> list[str]:
    """Days (``YYYY-MM-DD``) that have a request log, oldest first."""
    root = serving_dir(storage_base, model)
    if not root.exists():
        return []
    return sorted(p.name[len(DATE_PREFIX) :] for p in root.iterdir() if p.name.startswith(DATE_PREFIX))


def read_log(storage_base: Any, model: str, dates: Iterable[str] | None = None) -> pd.DataFrame:
    """The request log of ``dates`` (default: every day), one row per scored row; empty when there is none.

    Part files are read one by one: a column that was all null in one file and typed in another does not
    break the read.
    """
    root = serving_dir(storage_base, model)
    wanted = list(dates) if dates is not None else log_dates(storage_base, model)
    frames = []
    for day in wanted:
        folder = root / f"{DATE_PREFIX}{day}"
        if not folder.exists():
            continue
        for part in sorted(folder.iterdir(), key=lambda p: p.name):
            if part.name.startswith((".", "_")) or not part.name.endswith(".parquet"):
                continue
            frames.append(pd.read_parquet(io.BytesIO(part.read_bytes())))
    if not frames:
        return pd.DataFrame(columns=list(META_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def served_rows(spec: ModelSpec, log: pd.DataFrame) -> pd.DataFrame:
    """The rows production answered with (role ``champion``): the model's inputs as production sent them."""
    if log.empty:
        return log
    return log[log["role"] == CHAMPION_ROLE].reset_index(drop=True)


def out_of_domain_rows(log: pd.DataFrame) -> int:
    """How many champion rows of ``log`` (:func:`read_log`) were answered outside the spec's domain
    (``serving.out_of_domain: flag``); 0 for a log without the column."""
    if log.empty or OUT_OF_DOMAIN_COLUMN not in log.columns:
        return 0
    return int((log[OUT_OF_DOMAIN_COLUMN].notna() & (log["role"] == CHAMPION_ROLE)).sum())


def _scores(spec: ModelSpec, rows: pd.DataFrame) -> np.ndarray:
    from mlops_airflow.core.scoring import output_scores

    return output_scores(rows, spec)


def live_metrics(spec: ModelSpec, log: pd.DataFrame, labels: pd.DataFrame) -> dict[str, Any]:
    """Metrics of every served version (and shadow challenger) on the requests whose labels arrived.

    :param log: :func:`read_log` rows.
    :param labels: ``request_id``, the spec's label column, and ``row`` when requests held several rows
        (without it a label applies to row 0 of its request).
    :return: ``{"labelled": n, "ambiguous": m, "by_version": [{"role", "model_version", "rows", "metrics"},
        ...], "agreement": share of labelled requests where challenger and champion predicted the same}``.
        A request row answered more than once in one role (a client that sent one ``X-Request-Id`` with
        several requests) is ambiguous: a label for it cannot tell which answer it belongs to, so none of its
        answers is scored; ``ambiguous`` counts those labelled rows.
    """
    from mlops_airflow.core.evaluation import Target, compute_metrics
    from mlops_airflow.core.scoring import encode_labels

    label = spec.label.name
    missing = [c for c in ("request_id", label) if c not in labels.columns]
    if missing:
        raise RowsError(f"{spec.name}: labels lack column(s) {missing} (request_id and the label {label!r})")
    keyed = labels.assign(row=labels["row"] if "row" in labels.columns else 0)[["request_id", "row", label]]
    keyed = keyed.drop_duplicates(["request_id", "row"], keep="last")
    joined = log.drop(columns=[label], errors="ignore").merge(keyed, on=["request_id", "row"], how="inner")
    joined = joined[joined[label].notna()]
    twice = joined.duplicated(["request_id", "row", "role"], keep=False)
    ambiguous = joined.loc[twice, ["request_id", "row"]].drop_duplicates()
    if len(ambiguous):
        keys = pd.MultiIndex.from_frame(joined[["request_id", "row"]])
        joined = joined[~keys.isin(pd.MultiIndex.from_frame(ambiguous))]
    target = Target.of(spec)
    out: dict[str, Any] = {
        "labelled": int((joined["role"] == CHAMPION_ROLE).sum()),
        "ambiguous": len(ambiguous),
        "by_version": [],
    }
    for (role, version), rows in joined.groupby(["role", "model_version"], sort=True):
        y = encode_labels(spec, rows[label])
        metrics = compute_metrics(target, y, _scores(spec, rows), threshold=float(rows["threshold"].iloc[0]))
        out["by_version"].append({"role": role, "model_version": str(version), "rows": len(rows), "metrics": metrics})
    champion = joined[joined["role"] == CHAMPION_ROLE].set_index(["request_id", "row"])
    challenger = joined[joined["role"] == CHALLENGER_ROLE].set_index(["request_id", "row"])
    both = champion.index.intersection(challenger.index)
    if len(both):
        same = champion.loc[both, "prediction"].to_numpy() == challenger.loc[both, "prediction"].to_numpy()
        out["agreement"] = float(np.mean(same))
    else:
        out["agreement"] = None
    return out
