"""Training: the scikit-learn pipeline of a model spec, its candidates, and the decision threshold.

The pipeline's input is :func:`~mlops_airflow.core.served_model.prepare_features` of the raw rows, exactly as
the logged model computes it; per-feature preprocessing comes from the spec (no code), and the only code a
spec may add is a transformer factory in a module under ``include/``, imported here, at task time.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler, TargetEncoder

from mlops_airflow.core.config import FeatureSpec, ModelSpec, ThresholdOptimize, higher_is_better, module_file
from mlops_airflow.core.estimators import load_estimator_class
from mlops_airflow.core.evaluation import Target, compute_metrics
from mlops_airflow.core.scoring import encode_labels, model_config, output_scores
from mlops_airflow.core.served_model import model_output, prepare_features


@dataclass(frozen=True)
class CandidateResult:
    index: int
    params: dict[str, Any]
    metrics: dict[str, float]
    fit_seconds: float
    #: Binary decision threshold chosen on the validation split (0.5 or the spec's fixed value otherwise).
    threshold: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)


def estimator_class(spec: ModelSpec) -> type:
    """The spec's estimator class, imported and checked (a classifier or regressor of the task)."""
    return load_estimator_class(spec.estimator.cls, "regression" if spec.kind == "regression" else "classification")


def load_transformer(factory: str) -> Any:
    """Call a ``module:function`` factory from a file under ``include/``; it must return a transformer."""
    path = module_file(factory)
    module_name, _, function = factory.partition(":")
    unique = f"mlops_include_{module_name.replace('.', '_')}"
    spec = importlib.util.spec_from_file_location(unique, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"transformer: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    spec.loader.exec_module(module)
    made = getattr(module, function, None)
    if not callable(made):
        raise ValueError(f"transformer: {path} has no function {function!r}")
    transformer = made()
    if not (hasattr(transformer, "fit") and hasattr(transformer, "transform")):
        raise ValueError(f"transformer: {factory} returned {type(transformer).__name__}, not an sklearn transformer")
    return transformer


def _numeric_steps(feature: FeatureSpec) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = []
    impute = feature.impute or "median"
    if impute != "none":
        kwargs = {"fill_value": feature.fill_value} if impute == "constant" else {}
        steps.append(("impute", SimpleImputer(strategy=impute, **kwargs)))
    if feature.log:
        steps.append(("log1p", FunctionTransformer(np.log1p, feature_names_out="one-to-one")))
    if feature.scale is not False:
        steps.append(("scale", StandardScaler()))
    return steps


def _categorical_encoder(feature: FeatureSpec) -> Any:
    grouping = {"min_frequency": feature.min_frequency, "max_categories": feature.max_categories}
    rare = feature.min_frequency is not None or feature.max_categories is not None
    if feature.encoding == "ordinal":
        return OrdinalEncoder(
            handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1, **grouping
        )
    if feature.encoding == "target":
        return TargetEncoder(random_state=0)
    min_frequency = feature.min_frequency
    if min_frequency is not None and min_frequency >= 1:
        grouping["min_frequency"] = int(min_frequency)
    return OneHotEncoder(handle_unknown="infrequent_if_exist" if rare else "ignore", sparse_output=False, **grouping)


def preprocessing(spec: ModelSpec) -> ColumnTransformer:
    """One transformer per feature, as the spec says (see :class:`~mlops_airflow.core.config.FeatureSpec`)."""
    transformers: list[tuple[str, Any, list[str]]] = []
    for f in spec.features:
        if f.use == "drop":
            continue
        columns = [f.name]
        if f.type == "datetime":
            columns = [f"{f.name}__{p}" for p in (f.parts or ["year", "month", "day", "dayofweek"])]
        if f.transformer is not None:
            step: Any = load_transformer(f.transformer)
        elif f.use == "passthrough":
            step = "passthrough"
        elif f.type == "numeric":
            steps = _numeric_steps(f)
            step = Pipeline(steps) if steps else "passthrough"
        elif f.type == "categorical":
            step = Pipeline(
                [
                    ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                    ("encode", _categorical_encoder(f)),
                ]
            )
        elif f.type == "boolean":
            step = SimpleImputer(strategy="most_frequent")
        else:  # datetime parts: numbers of very different scales (a year, a weekday)
            step = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        transformers.append((f.name, step, columns))
    return ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)


def build_pipeline(spec: ModelSpec, params: dict[str, Any] | None = None) -> Pipeline:
    """The spec's preprocessing -> its estimator with ``params`` over the spec's fixed params."""
    estimator = estimator_class(spec)(**{**spec.estimator.params, **(params or {})})
    return Pipeline([("preprocess", preprocessing(spec)), ("model", estimator)])


#: glibc's ``mallopt`` parameter number of the mmap threshold.
_M_MMAP_THRESHOLD = -3


def large_buffers_to_os(threshold: int = 4 << 20) -> bool:
    """Serve buffers of ``threshold`` bytes and more with pages of their own, handed back to the OS when freed.

    glibc raises its mmap threshold as large buffers are freed, after which a training window's
    per-column temporaries (a few MB each at a million rows) come from the heap and stay in the process
    after they are freed: measured, a fit of a million rows peaked ~90 MB higher. Fixing the threshold
    keeps a training task's peak near what is alive. Process-wide, set at the start of a training task,
    which also hands back what earlier work in the process freed (``malloc_trim``: tasks that share a process,
    as under ``dag.test()``). A no-op (False) where the C library has no ``mallopt`` (musl, macOS).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        fixed = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return fixed


def validation_split(spec: ModelSpec, train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Time-based: the newest training batch validates the candidates, the rest fits them.

    Candidates (and the binary threshold) are chosen on this split, never on the evaluation set, so that
    the gate's comparison with the champion on the evaluation set is not biased by the choice.
    """
    ts = spec.source.timestamp_column
    stamps = train[ts]
    if isinstance(stamps.dtype, pd.CategoricalDtype):  # text read as categorical: compare the distinct texts
        present = stamps.cat.remove_unused_categories().cat.categories
        latest = (stamps == present.max()).to_numpy() if len(present) else np.zeros(len(stamps), dtype=bool)
    else:
        latest = (stamps == stamps.max()).to_numpy()
    older = (stamps.notna() & ~latest).to_numpy()
    first = int(np.argmax(latest)) if latest.any() else len(latest)
    if latest[first:].all() and older[:first].all():
        # The newest rows are the frame's tail (batches are read in time order): row slices are views, not a
        # copy of the training window.
        fit, valid = train.iloc[:first], train.iloc[first:]
    else:
        fit, valid = train[older], train[latest]
    if fit.empty:  # a single training batch: hold out its last fifth instead
        cut = int(len(train) * 0.8)
        fit, valid = train.iloc[:cut], train.iloc[cut:]
    return fit, valid


def fit(spec: ModelSpec, params: dict[str, Any], rows: pd.DataFrame) -> Pipeline:
    """Fit a fresh pipeline on labelled raw rows (with balanced sample weights when the spec asks)."""
    pipeline = build_pipeline(spec, params)
    x = prepare_features(rows, model_config(spec, 0.5, []))
    y = rows[spec.label.name]
    if spec.is_classifier:  # a label outside label.values fails here, naming it, not deep inside scikit-learn
        encode_labels(spec, y)
    fit_params = {}
    if spec.estimator.sample_weight == "balanced":
        from sklearn.utils.class_weight import compute_sample_weight

        fit_params["model__sample_weight"] = compute_sample_weight("balanced", y.astype(str))
    pipeline.fit(x, y, **fit_params)
    return pipeline


def decision_threshold(spec: ModelSpec, y_valid: np.ndarray, p_valid: np.ndarray) -> float:
    """The binary threshold: the spec's number, or the one optimising F1 / Youden's J on the validation rows."""
    if spec.kind != "binary":
        return 0.5
    if isinstance(spec.threshold, ThresholdOptimize):
        from mlops_airflow.core.evaluation import choose_threshold

        return float(choose_threshold(y_valid, p_valid, spec.threshold.optimize))
    return float(spec.threshold) if spec.threshold is not None else 0.5


def score_rows(spec: ModelSpec, pipeline: Any, rows: pd.DataFrame, threshold: float = 0.5) -> np.ndarray:
    """Score array (see :func:`~mlops_airflow.core.scoring.output_scores`) of a fitted pipeline on raw rows."""
    return output_scores(model_output(pipeline, rows, model_config(spec, threshold, [])), spec)


def fit_candidate(spec: ModelSpec, params: dict[str, Any], train: pd.DataFrame) -> tuple[Pipeline, Any]:
    """Fit on the fit split, choose the threshold and score on the validation split.

    :return: the pipeline and ``(metrics, fit seconds, threshold)``.
    """
    fit_rows, valid = validation_split(spec, train)
    started = time.perf_counter()
    pipeline = fit(spec, params, fit_rows)
    seconds = time.perf_counter() - started
    target = Target.of(spec)
    y_val = encode_labels(spec, valid[spec.label.name])
    score = score_rows(spec, pipeline, valid)
    threshold = decision_threshold(spec, y_val, score)
    metrics = compute_metrics(target, y_val, score, threshold=threshold)
    return pipeline, (metrics, seconds, threshold)


def fit_final(spec: ModelSpec, params: dict[str, Any], train: pd.DataFrame) -> Pipeline:
    """Refit the chosen candidate on the whole training window."""
    return fit(spec, params, train)


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
