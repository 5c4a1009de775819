"""Training: the scikit-learn pipeline of a model spec, its candidates, and the decision threshold.

The pipeline's input is :func:`~mlops_airflow.core.served_model.prepare_features` of the raw rows, exactly as
the logged model computes it; per-feature preprocessing comes from the spec (no code), and the only code a
spec may add is a transformer factory in a module under ``include/``, imported here, at task time.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler, TargetEncoder

from mlops_airflow.core.config import module_file
from mlops_airflow.core.data import DataError, Snapshot
from mlops_airflow.core.errors import RowsError
from mlops_airflow.core.estimators import load_estimator_class
from mlops_airflow.core.evaluation import Target, compute_metrics, undefined_reasons
from mlops_airflow.core.metrics import higher_is_better
from mlops_airflow.core.scoring import encode_labels, label_index, model_config, output_scores
from mlops_airflow.core.served_model import model_output, prepare_features
from mlops_airflow.core.spec import FeatureSpec, ModelSpec, ModelSpecError, ThresholdOptimize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateResult:
    index: int
    params: dict[str, Any]
    #: Selection metrics; ``None`` (or NaN) where undefined on the selection rows.
    metrics: dict[str, float | None]
    fit_seconds: float
    #: Binary decision threshold chosen on the selection rows (0.5 or the spec's fixed value otherwise).
    threshold: float = 0.5
    #: ``selection`` (:attr:`SelectionSplit.summary`) and ``undefined`` (why a metric is undefined).
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
        raise ModelSpecError(f"transformer: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    spec.loader.exec_module(module)
    made = getattr(module, function, None)
    if not callable(made):
        raise ModelSpecError(f"transformer: {path} has no function {function!r}")
    transformer = made()
    if not (hasattr(transformer, "fit") and hasattr(transformer, "transform")):
        raise ModelSpecError(
            f"transformer: {factory} returned {type(transformer).__name__}, not an sklearn transformer"
        )
    return transformer


def _numeric_steps(feature: FeatureSpec) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = []
    impute = feature.impute or "median"
    if impute != "none":
        kwargs = {"fill_value": feature.fill_value} if impute == "constant" else {}
        # A column missing in every training row is kept (as 0): later rows may hold it, and the steps after
        # the imputer need a column.
        steps.append(("impute", SimpleImputer(strategy=impute, keep_empty_features=True, **kwargs)))
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


def _step_name(feature: str, taken: list[str]) -> str:
    """The feature's name as the name of its step: scikit-learn refuses ``__`` in a step name (it separates
    parameter paths), so a feature such as ``amount__eur`` gets ``amount_eur`` (numbered if that is taken).
    Output column names come from the columns, never from step names."""
    name, n = feature.replace("__", "_"), 1
    while name in taken:
        n += 1
        name = f"{feature.replace('__', '_')}_{n}"
    return name


def preprocessing(spec: ModelSpec) -> ColumnTransformer:
    """One transformer per feature, as the spec says (see :class:`~mlops_airflow.core.spec.FeatureSpec`)."""
    transformers: list[tuple[str, Any, list[str]]] = []
    made: dict[str, str] = {}  # pipeline input column -> the feature it comes from
    for f in spec.features:
        if f.use == "drop":
            continue
        columns = [f.name]
        if f.type == "datetime":
            columns = [f"{f.name}__{p}" for p in (f.parts or ["year", "month", "day", "dayofweek"])]
        for column in columns:
            if column in made:  # prepare_features would give both the same column: one of them silently lost
                raise ModelSpecError(
                    f"{spec.name}: features: {made[column]!r} and {f.name!r} both give the model input column "
                    f"{column!r} (a datetime feature gives <name>__<part>); rename one of them"
                )
            made[column] = f.name
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
                    # missing: most_frequent fills a gap (None) with the window's commonest category
                    ("impute", SimpleImputer(strategy="most_frequent", missing_values=None, keep_empty_features=True))
                    if f.missing == "most_frequent"
                    else ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                    ("encode", _categorical_encoder(f)),
                ]
            )
        elif f.type == "boolean":
            step = SimpleImputer(strategy="most_frequent", keep_empty_features=True)
        else:  # datetime parts: numbers of very different scales (a year, a weekday)
            step = Pipeline(
                [("impute", SimpleImputer(strategy="median", keep_empty_features=True)), ("scale", StandardScaler())]
            )
        transformers.append((_step_name(f.name, [t[0] for t in transformers]), step, columns))
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


class SplitError(DataError):
    """Training rows too few or too one-sided to compare candidates or to gate on; the message has the numbers."""


@dataclass(frozen=True)
class SelectionSplit:
    """The training window split for candidate selection: ``fit`` rows and the newest ``valid`` rows."""

    fit: pd.DataFrame
    valid: pd.DataFrame
    #: What the selection rows are: ``rows``, ``batches`` (0: the tail of a single batch), ``fit_rows`` and,
    #: for a classifier, ``classes`` (rows per class present).
    summary: dict[str, Any]


def _day_ranks(stamps: pd.Series) -> tuple[np.ndarray, int]:
    """Each row's batch as a rank by timestamp, 0 for the newest (-1: no timestamp), and the number of batches."""
    if isinstance(stamps.dtype, pd.CategoricalDtype):  # text read as categorical: rank the distinct texts
        present = stamps.cat.remove_unused_categories()
        codes, uniques = present.cat.codes.to_numpy(), np.asarray(present.cat.categories)
    else:
        codes, uniques = pd.factorize(stamps, use_na_sentinel=True)
        uniques = np.asarray(uniques)
    rank_of = np.empty(len(uniques), dtype="int64")
    rank_of[np.argsort(uniques, kind="stable")[::-1]] = np.arange(len(uniques))
    ranks = np.where(codes >= 0, rank_of[np.maximum(codes, 0)] if len(uniques) else -1, -1)
    return ranks.astype("int64", copy=False), len(uniques)


def _class_index(spec: ModelSpec, y: pd.Series, part: str) -> np.ndarray:
    """Index of every label in the spec's classes.

    :param part: the rows, as the message names them (``the training window``, ``the evaluation set``).
    :raises SplitError: a label outside ``label.values`` or a row without one (rule ``label_values``): the
        rows would otherwise be left out of the class counts unsaid, and a retry reads the same rows.
    """
    try:
        return label_index(spec, y)
    except RowsError as err:
        message = str(err).replace(f"{spec.name}: ", f"{spec.name}: {part}: ", 1)
        raise SplitError(message, rule="label_values", column=spec.label.name) from None


def _selection_batches(rows: np.ndarray, classes: np.ndarray | None, min_rows: int) -> int:
    """How many of the newest batches select: as few as hold ``min_rows`` rows and every class of the window,
    never more than half the window's rows (the newest batch always), never the oldest batch."""
    total, taken, k = int(rows.sum()), 0, 0
    wanted = classes.sum(axis=0) > 0 if classes is not None else None
    seen = np.zeros_like(wanted) if wanted is not None else None
    while k < len(rows) - 1:
        if k and 2 * (taken + int(rows[k])) > total:
            break
        taken += int(rows[k])
        if classes is not None and seen is not None:
            seen |= classes[k] > 0
        k += 1
        if taken >= min_rows and (wanted is None or bool((seen >= wanted).all())):
            break
    return k


def _rows_or_tail(train: pd.DataFrame, selected: np.ndarray, fitted: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(fit, valid)`` as row slices (views, no copy of the window) when the selected rows are the frame's
    tail, as they are when batches were read in time order; boolean masks otherwise."""
    first = int(np.argmax(selected)) if selected.any() else len(selected)
    if selected[first:].all() and fitted[:first].all():
        return train.iloc[:first], train.iloc[first:]
    return train[fitted], train[selected]


def _present(counts: np.ndarray, classes: list[Any]) -> dict[str, int]:
    return {str(c): int(n) for c, n in zip(classes, counts, strict=True) if n}


def selection_split(spec: ModelSpec, train: pd.DataFrame) -> SelectionSplit:
    """Split the training window by time for candidate selection (see :class:`~mlops_airflow.core.spec.
    WindowSpec`): the newest whole batches are the selection rows, the older ones fit the candidates.

    Candidates (and the binary threshold) are chosen on these rows, never on the evaluation set, so that the
    gate's comparison with the champion on the evaluation set is not biased by the choice. A window of a
    single batch holds out its newest rows instead: a fifth, at least ``min_selection_rows``, at most half.

    :raises SplitError: fewer than ``window.min_selection_rows`` selection rows, or (classifier) selection or
        fit rows of a single class; the message gives the rows and classes of each part.
    """
    ranks, n_batches = _day_ranks(train[spec.source.timestamp_column])
    min_rows = spec.window.min_selection_rows
    index = _class_index(spec, train[spec.label.name], "the training window") if spec.is_classifier else None
    k_classes = len(spec.classes)
    per_batch = None
    if index is not None:
        known = (ranks >= 0) & (index >= 0)
        flat = np.bincount(ranks[known] * k_classes + index[known], minlength=n_batches * k_classes)
        per_batch = flat.reshape(n_batches, k_classes)
    rows = np.bincount(ranks[ranks >= 0], minlength=n_batches)
    k = _selection_batches(rows, per_batch, min_rows)
    if k:
        selected, fitted = (ranks >= 0) & (ranks < k), ranks >= k
    else:  # a single batch: its newest rows (the frame's tail) select
        n = len(train)
        held = min(max(n - int(n * 0.8), min_rows), n // 2)
        selected = np.arange(n) >= n - held
        fitted = ~selected
    fit_rows, valid = _rows_or_tail(train, selected, fitted)
    summary: dict[str, Any] = {"rows": len(valid), "batches": k, "fit_rows": len(fit_rows)}
    if index is not None:
        summary["classes"] = _present(np.bincount(index[selected & (index >= 0)], minlength=k_classes), spec.classes)
        summary["fit_classes"] = _present(np.bincount(index[fitted & (index >= 0)], minlength=k_classes), spec.classes)
        summary["window_classes"] = _present(np.bincount(index[index >= 0], minlength=k_classes), spec.classes)
    _check_selection(spec, summary, n_batches)
    return SelectionSplit(fit_rows, valid, summary)


def _check_selection(spec: ModelSpec, summary: dict[str, Any], n_batches: int) -> None:
    problems = []
    min_rows = spec.window.min_selection_rows
    if summary["rows"] < min_rows:
        problems.append(f"{summary['rows']} selection row(s), at least {min_rows} needed (window.min_selection_rows)")
    if spec.is_classifier:
        for part, key in (("selection", "classes"), ("fit", "fit_classes")):
            if len(summary[key]) < 2:
                problems.append(f"the {part} rows hold {len(summary[key])} class(es) {summary[key]}, at least 2 needed")
    if problems:
        where = "the newest rows of its single batch" if not summary["batches"] else f"{summary['batches']} batch(es)"
        classes = f", classes {summary['window_classes']}" if spec.is_classifier else ""
        raise SplitError(
            f"{spec.name}: cannot compare candidates: {'; '.join(problems)}. The training window holds "
            f"{summary['rows'] + summary['fit_rows']} row(s) in {n_batches} batch(es){classes}; selection takes the "
            f"newest whole batches, never more than half of the window's rows (here {where}: {summary['rows']} "
            f"row(s), {summary['fit_rows']} left to fit). Land more rows per batch, raise window.train_batches or "
            "lower window.min_selection_rows."
        )
    missing = sorted(set(summary.get("window_classes", {})) - set(summary.get("classes", {})))
    if missing:
        log.warning(
            "%s: class(es) %s of the training window are not among the %d selection row(s) (selection stops at half "
            "the window's rows and never takes its oldest batch): selection metrics leave them out",
            spec.name,
            missing,
            summary["rows"],
        )
    absent = [str(c) for c in spec.classes if spec.is_classifier and str(c) not in summary["window_classes"]]
    if absent:
        log.warning(
            "%s: class(es) %s of label.values have no row in the training window: the model cannot learn them and "
            "gives them probability 0",
            spec.name,
            absent,
        )


def validation_split(spec: ModelSpec, train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(fit, valid)`` of :func:`selection_split`."""
    split = selection_split(spec, train)
    return split.fit, split.valid


def check_evaluation_set(spec: ModelSpec, labels: pd.Series, snapshot: Snapshot | None = None) -> dict[str, Any]:
    """Check that the gate's evaluation set holds ``window.min_eval_rows`` rows and (classifier) two classes.

    :param labels: the evaluation set's label column.
    :param snapshot: named in the message, with how many of its newest batches would hold enough rows.
    :return: ``rows`` and, for a classifier, ``classes`` (rows per class present).
    :raises SplitError: with the rows and classes found and the setting that would change it.
    """
    need = spec.window.min_eval_rows
    found: dict[str, Any] = {"rows": len(labels)}
    problems = []
    if len(labels) < need:
        problems.append(f"at least {need} rows (window.min_eval_rows)")
    if spec.is_classifier:
        index = _class_index(spec, labels, f"the evaluation set{_batch_names(snapshot)}")
        found["classes"] = _present(np.bincount(index[index >= 0], minlength=len(spec.classes)), spec.classes)
        if len(found["classes"]) < 2:
            problems.append("rows of at least 2 classes")
    if problems:
        holds = f"{found['rows']} row(s)" + (f", classes {found['classes']}" if spec.is_classifier else "")
        raise SplitError(
            f"{spec.name}: the evaluation set{_batch_names(snapshot)} holds {holds}; the gate needs "
            f"{' and '.join(problems)}. {_eval_hint(spec, snapshot)}"
        )
    return found


def _batch_names(snapshot: Snapshot | None) -> str:
    if snapshot is None:
        return ""
    names = [b.name for b in snapshot.batches if b.part == "eval"]
    return f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"


def _eval_hint(spec: ModelSpec, snapshot: Snapshot | None) -> str:
    """How many of the newest batches would hold ``min_eval_rows`` rows (whole batches, newest first), and the
    setting of the spec's kind of window that takes them."""
    need, taken, count = spec.window.min_eval_rows, 0, 0
    for batch in reversed(snapshot.batches if snapshot is not None else []):
        taken, count = taken + batch.rows, count + 1
        if taken >= need:
            break
    kind = getattr(spec.window, "kind", "batches")  # a window measured in batches, days or rows
    setting = {
        "rows": f"set window.eval_rows to {need} or more",
        "time": "widen window.eval_days (or eval_weeks)",
    }.get(kind, f"set window.eval_batches to {count} or more (the training window then starts earlier)")
    if snapshot is None:
        return "Widen the evaluation set (window) or lower window.min_eval_rows."
    if taken < need:
        return (
            f"All {count} batch(es) of this snapshot hold {taken} rows: land more rows per batch, widen the "
            "evaluation set (window) or lower window.min_eval_rows."
        )
    return f"The newest {count} batch(es) of this snapshot hold {taken} rows: {setting}, or lower window.min_eval_rows."


def fit_labels(spec: ModelSpec, y: pd.Series) -> np.ndarray:
    """The label column as the estimator is fitted on it: a classifier's labels as the spec's own values
    (``label.values``, their type), a regression target as float64.

    The logged model names its probability columns by matching the fitted ``classes_`` with the spec's
    values; fitted on the column as it was read, a ``boolean`` or Arrow column would have given classes
    ``0.0``/``1.0`` that match no ``false``/``true`` (every probability 0, silently).

    :raises RowsError: a label outside ``label.values``, a row without a label, or a regression target that
        is not a finite number, naming the label column and the values.
    """
    if not spec.is_classifier:
        return encode_labels(spec, y)
    values = np.asarray(spec.classes)
    if values.dtype.kind == "U":  # text as objects: one shared string per class, not a fixed-width copy per row
        values = np.asarray(spec.classes, dtype=object)
    return values[label_index(spec, y)]


def _check_inputs(spec: ModelSpec, x: pd.DataFrame, estimator: Any) -> None:
    """Refuse training rows a feature's own settings cannot take, naming the feature and the rule: a
    ``log: true`` value at or below -1 (``log1p`` is NaN there); a gap in a numeric feature that is not imputed
    (numeric ``impute: none``, or ``use: passthrough``) when the estimator takes no missing value, or in every
    row."""
    tags = getattr(estimator, "__sklearn_tags__", None)  # unknown (no tags): scikit-learn itself will say
    allow_nan = tags is None or bool(getattr(getattr(tags(), "input_tags", None), "allow_nan", True))
    for feature in spec.features:
        if feature.use == "drop" or feature.type not in ("numeric", "boolean") or feature.transformer is not None:
            continue
        values = x[feature.name].to_numpy(dtype="float64")
        if feature.type == "numeric" and feature.log and feature.use != "passthrough" and (values <= -1).any():
            bad = values[values <= -1]
            raise RowsError(
                f"{spec.name}: feature {feature.name!r} has log: true, which needs values > -1 (log1p; values "
                f">= 0 are meant): {len(bad)} training row(s) hold less, e.g. {float(bad.min())!r}"
            )
        if not (feature.impute == "none" or feature.use == "passthrough"):
            continue
        gaps = int(np.isnan(values).sum())
        unimputed = "use: passthrough" if feature.use == "passthrough" else "impute: none"
        remedy = "impute it (median, mean, constant)" if feature.type == "numeric" else "use: model fills a gap"
        if gaps and gaps == len(values):
            raise RowsError(
                f"{spec.name}: feature {feature.name!r} is missing in all {len(values)} training row(s) and has "
                f"{unimputed}: nothing to fit on; {remedy} or leave it out (use: drop)"
            )
        if gaps and not allow_nan:
            raise RowsError(
                f"{spec.name}: feature {feature.name!r} is missing in {gaps} of {len(values)} training row(s) and "
                f"has {unimputed}, but {spec.estimator.cls} takes no missing value: {remedy} or choose an "
                "estimator that takes gaps (e.g. HistGradientBoostingClassifier)"
            )


def fit(spec: ModelSpec, params: dict[str, Any], rows: pd.DataFrame) -> Pipeline:
    """Fit a fresh pipeline on labelled raw rows (with balanced sample weights when the spec asks).

    The estimator is fitted on :func:`fit_labels` of the label column: a label outside ``label.values`` fails
    here, naming it, not deep inside scikit-learn.
    """
    pipeline = build_pipeline(spec, params)
    x = prepare_features(rows, model_config(spec, 0.5, []))
    y = fit_labels(spec, rows[spec.label.name])
    _check_inputs(spec, x, pipeline.named_steps["model"])
    fit_params = {}
    if spec.estimator.sample_weight == "balanced":
        from sklearn.utils.class_weight import compute_sample_weight

        fit_params["model__sample_weight"] = compute_sample_weight("balanced", y.astype(str))
    try:
        pipeline.fit(x, y, **fit_params)
    except ValueError as err:  # the estimator's own rule about its inputs, e.g. Poisson labels >= 0
        raise RowsError(
            f"{spec.name}: {spec.estimator.cls} cannot fit the {len(x)} training row(s) (label "
            f"{spec.label.name!r}): {err}"
        ) from err
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


@dataclass(frozen=True)
class CandidateFit:
    """A candidate fitted on the fit rows and scored on the selection rows."""

    pipeline: Pipeline
    #: Every metric of the target's kind on the selection rows; NaN where undefined.
    metrics: dict[str, float]
    seconds: float
    threshold: float
    #: :attr:`SelectionSplit.summary` of the split it was chosen on.
    selection: dict[str, Any]
    #: Why each undefined (NaN) metric is undefined.
    undefined: dict[str, str]


def train_candidate(spec: ModelSpec, params: dict[str, Any], train: pd.DataFrame) -> CandidateFit:
    """Fit on the fit rows, choose the threshold and score on the selection rows (:func:`selection_split`)."""
    split = selection_split(spec, train)
    started = time.perf_counter()
    pipeline = fit(spec, params, split.fit)
    seconds = time.perf_counter() - started
    target = Target.of(spec)
    y_val = encode_labels(spec, split.valid[spec.label.name])
    score = score_rows(spec, pipeline, split.valid)
    threshold = decision_threshold(spec, y_val, score)
    metrics = compute_metrics(target, y_val, score, threshold=threshold)
    undefined = undefined_reasons(target, y_val, score, metrics)
    return CandidateFit(pipeline, metrics, seconds, threshold, split.summary, undefined)


def fit_candidate(spec: ModelSpec, params: dict[str, Any], train: pd.DataFrame) -> tuple[Pipeline, Any]:
    """:func:`train_candidate` as ``(pipeline, (metrics, fit seconds, threshold))``."""
    done = train_candidate(spec, params, train)
    return done.pipeline, (done.metrics, done.seconds, done.threshold)


def fit_final(spec: ModelSpec, params: dict[str, Any], train: pd.DataFrame) -> Pipeline:
    """Refit the chosen candidate on the whole training window."""
    return fit(spec, params, train)


def _defined(value: float | None) -> TypeGuard[float]:
    return value is not None and bool(np.isfinite(float(value)))


def best_candidate(spec: ModelSpec, results: list[CandidateResult]) -> CandidateResult:
    """The candidate with the best primary metric on the selection rows.

    Ties go to the lower index. A candidate whose primary metric is undefined there (``None`` or NaN) ranks
    after every candidate with a defined one.

    :raises ValueError: no candidate finished, or none has a defined primary metric (the message names the
        metric, the selection rows and their classes, and why it is undefined).
    """
    if not results:
        raise ValueError(f"{spec.name}: no candidate finished training")
    metric = spec.primary
    sign = 1.0 if higher_is_better(metric) else -1.0
    defined = [(float(value), r) for r in results if _defined(value := r.metrics.get(metric))]
    if not defined:
        first = min(results, key=lambda r: r.index)
        selection = first.extra.get("selection") or {}
        rows = f"{selection['rows']} selection row(s)" if "rows" in selection else "the selection rows"
        if "classes" in selection:
            rows += f", classes {selection['classes']} of {[str(c) for c in spec.classes]}"
        why = (first.extra.get("undefined") or {}).get(metric, "undefined on these rows")
        raise ValueError(
            f"{spec.name}: no candidate can be chosen: the primary metric {metric!r} is undefined for all "
            f"{len(results)} candidate(s) on {rows} ({why}); choose another primary_metric or widen the selection "
            "rows (window.min_selection_rows, window.train_batches)"
        )
    return min(defined, key=lambda scored: (-sign * scored[0], scored[1].index))[1]
