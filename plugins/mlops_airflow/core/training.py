"""Training: the sklearn Pipeline of a model spec and its candidate grid."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlops_airflow.core.config import ModelSpec, higher_is_better
from mlops_airflow.core.data import split_xy
from mlops_airflow.core.evaluation import compute_metrics, predict_scores


@dataclass(frozen=True)
class CandidateResult:
    index: int
    params: dict[str, Any]
    metrics: dict[str, float]
    fit_seconds: float


def estimator_class(spec: ModelSpec) -> type:
    module_name, _, cls_name = spec.estimator.cls.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), cls_name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError):
        raise ValueError(f"estimator.class: cannot import {spec.estimator.cls!r}") from None


def build_pipeline(spec: ModelSpec, params: dict[str, Any] | None = None) -> Pipeline:
    """ColumnTransformer (impute + scale numeric, impute + one-hot categorical) -> the spec's estimator."""
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    transformers = []
    if spec.numeric_features:
        transformers.append(("numeric", numeric, spec.numeric_features))
    if spec.categorical_features:
        transformers.append(("categorical", categorical, spec.categorical_features))
    preprocess = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    estimator = estimator_class(spec)(**{**spec.estimator.params, **(params or {})})
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


def validation_split(spec: ModelSpec, train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Time-based: the newest training batch validates the candidates, the rest fits them.

    Candidates are chosen on this split, never on the evaluation set, so that the gate's comparison with
    the champion on the evaluation set is not biased by the choice.
    """
    ts = spec.source.timestamp_column
    newest = train[ts].max()
    fit, valid = train[train[ts] < newest], train[train[ts] == newest]
    if fit.empty:  # a single training batch: hold out its last fifth instead
        cut = int(len(train) * 0.8)
        fit, valid = train.iloc[:cut], train.iloc[cut:]
    return fit, valid


def fit_candidate(spec: ModelSpec, params: dict[str, Any], train: pd.DataFrame) -> tuple[Pipeline, Any]:
    """Fit on the fit split, score on the validation split; returns the pipeline and its metrics."""
    import time

    fit, valid = validation_split(spec, train)
    x_fit, y_fit = split_xy(spec, fit)
    x_val, y_val = split_xy(spec, valid)
    pipeline = build_pipeline(spec, params)
    started = time.perf_counter()
    pipeline.fit(x_fit, y_fit)
    seconds = time.perf_counter() - started
    metrics = compute_metrics(spec.task, y_val, predict_scores(pipeline, x_val, spec.task))
    return pipeline, (metrics, seconds)


def fit_final(spec: ModelSpec, params: dict[str, Any], train: pd.DataFrame) -> Pipeline:
    """Refit the chosen candidate on the whole training window."""
    x, y = split_xy(spec, train)
    pipeline = build_pipeline(spec, params)
    pipeline.fit(x, y)
    return pipeline


def best_candidate(spec: ModelSpec, results: list[CandidateResult]) -> CandidateResult:
    """The candidate with the best primary metric on the validation split (ties: the lower index)."""
    if not results:
        raise ValueError(f"{spec.name}: no candidate finished training")
    metric = spec.primary
    sign = 1.0 if higher_is_better(metric) else -1.0

    def key(r: CandidateResult) -> tuple[float, int]:
        value = r.metrics.get(metric)
        score = float("-inf") if value is None or value != value else sign * value
        return (-score, r.index)

    return sorted(results, key=key)[0]
