"""Between a model spec and its logged model: the model's input frame, its config, and scores from its output.

The logged model (:mod:`mlops_airflow.core.served_model`) answers with ``prediction`` and ``proba_<class>``
columns; everything that scores (selection, the gate, the smoke test, batch scoring, the monitor) turns that
answer into the score arrays of :mod:`mlops_airflow.core.evaluation` here, so all of them use the same
probabilities of the same model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlops_airflow.core.errors import RowsError
from mlops_airflow.core.served_model import category_text, proba_column
from mlops_airflow.core.spec import ModelSpec


def model_input(spec: ModelSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The raw columns the logged model takes (features not dropped), normalised for its signature.

    Numeric -> float64 (an integer column with one missing value would otherwise break the signature),
    categorical -> str or None, datetime -> ISO text; booleans as they are.
    """
    missing = [c for c in spec.model_features if c not in frame.columns]
    if missing:
        raise RowsError(f"rows lack the model's feature column(s) {missing}")
    x = frame[spec.model_features].copy()
    for feature in spec.features:
        if feature.use == "drop":
            continue
        name = feature.name
        if feature.type == "numeric":
            x[name] = pd.to_numeric(x[name], errors="coerce").astype("float64")
        elif feature.type == "categorical":
            x[name] = x[name].astype("object").map(category_text)
        elif feature.type == "datetime":
            moments = pd.to_datetime(x[name], errors="coerce", utc=True)
            x[name] = moments.dt.strftime("%Y-%m-%dT%H:%M:%S%z").astype("object").where(moments.notna(), None)
    return x


def model_signature(spec: ModelSpec, example: pd.DataFrame, output: pd.DataFrame) -> Any:
    """The logged model's signature: inferred from ``example`` and the model's ``output``, numeric features
    declared ``Any``.

    MLflow refuses an int64 column where the signature says ``double`` ("Can not safely convert int64 to
    float64") and a float64 one where it says ``long``; a numeric column read from a landed file is either,
    depending on its values and gaps. ``Any`` lets both reach the model, which converts each numeric feature
    to float itself and refuses a value that is not a number (:class:`~mlops_airflow.core.served_model.
    SpecModel`). Every other column keeps its inferred type.
    """
    from mlflow.models import infer_signature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    signature = infer_signature(example, output)
    # Categorical features too: a code lands as 3, 3.0 or "3" (or True), and the model reads each as its text.
    loose = set(spec.numeric_features) | set(spec.categorical_features)
    columns = [
        ColSpec(AnyType(), column.name, required=True) if column.name in loose else column
        for column in signature.inputs.inputs
    ]
    signature.inputs = Schema(columns)
    return signature


def split_model_xy(spec: ModelSpec, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    return model_input(spec, frame), frame[spec.label.name]


def model_config(spec: ModelSpec, threshold: float, trusted_types: list[str]) -> dict[str, Any]:
    """What the logged model needs besides its pipeline (stored as the pyfunc's ``model_config``)."""
    classes = spec.classes
    return {
        "model": spec.name,
        "kind": spec.kind,
        "classes": classes,
        "positive_index": classes.index(spec.positive_label) if spec.kind == "binary" else None,
        "threshold": float(threshold),
        "features": [
            {"name": f.name, "type": f.type, "parts": list(f.parts or ["year", "month", "day", "dayofweek"])}
            for f in spec.features
            if f.use != "drop"
        ],
        "trusted_types": list(trusted_types),
    }


def output_scores(output: Any, spec: ModelSpec) -> np.ndarray:
    """Score array of a model's answer: binary P(positive) (n,), multiclass (n, k) in spec order,
    regression (n,). Also reads an older model's plain ``predict_proba`` array."""
    if isinstance(output, pd.DataFrame):
        if spec.kind == "regression":
            return output["prediction"].to_numpy(dtype="float64")
        columns = [proba_column(c) for c in spec.classes]
        absent = [c for c in columns if c not in output.columns]
        if absent:
            raise ValueError(f"{spec.name}: the model's answer lacks the class probability column(s) {absent}")
        proba = output[columns].to_numpy(dtype="float64")
    else:
        array = np.asarray(output, dtype="float64")
        if spec.kind == "regression":
            return array.ravel()
        proba = array if array.ndim == 2 else np.column_stack([1.0 - array, array])
    if spec.kind == "binary":
        return proba[:, spec.classes.index(spec.positive_label)]
    return proba


def _label_array(spec: ModelSpec, y: Any) -> np.ndarray:
    """The label column as numpy: classes keep each value's own type (never "1" turned into 1), as objects,
    unless numpy holds the column as one type already (int, float, bool), which is both exact and much faster
    to look up. A pandas extension column (``Int64``, ``boolean``, ``string``, ``category``, Arrow) gives its
    values as Python objects, missing ones as ``None``."""
    dtype = getattr(y, "dtype", None)
    if isinstance(y, pd.Series | pd.Index) and not isinstance(dtype, np.dtype):
        values = y.astype(object).to_numpy()
        if values.size:
            values[pd.isna(values)] = None
        return values
    typed = getattr(dtype, "kind", "O") in "biuf"
    return np.asarray(y) if typed or not spec.is_classifier else np.asarray(y, dtype=object)


def _missing(values: np.ndarray) -> int:
    """Rows without a value (None, NaN, NA) in a label array."""
    flat = values.ravel()
    return int(pd.isna(flat).sum()) if flat.dtype.kind in "fO" else 0


def _label_error(spec: ModelSpec, values: np.ndarray, err: Exception) -> RowsError:
    """The error of labels that are not the spec's; rows without a label are counted and said to be so."""
    missing = _missing(values)
    unlabelled = (
        f"{missing} row(s) without a label (null/NaN): training and evaluation take labelled rows only (the "
        "snapshot leaves rows without a label out); "
        if missing
        else ""
    )
    return RowsError(f"{spec.name}: label {spec.label.name!r}: {unlabelled}{err}")


def label_index(spec: ModelSpec, y: Any) -> np.ndarray:
    """Index in ``spec.classes`` of every label of a classifier (int64).

    :raises RowsError: a label that is not one of ``label.values``, or a row without one, naming them.
    """
    from mlops_airflow.core.evaluation import Target

    values = _label_array(spec, y)
    index = Target.of(spec).index_of(values)
    if (index < 0).any():
        encode_labels(spec, y)  # raises, naming the values
    return index


def encode_labels(spec: ModelSpec, y: Any) -> np.ndarray:
    """Labels as the metric functions take them (:meth:`~mlops_airflow.core.evaluation.Target.encode`).

    :raises RowsError: a label that is not one of ``label.values`` (classifier), a regression target that is
        not a finite number, or a row without a label; the message names the label column and the values.
    """
    from mlops_airflow.core.evaluation import Target

    values = _label_array(spec, y)
    try:
        encoded = Target.of(spec).encode(values)
    except (TypeError, ValueError) as err:
        raise _label_error(spec, values, err) from None
    if not spec.is_classifier and not np.isfinite(encoded).all():
        infinite = int(np.isinf(encoded).sum())
        problem = f"{infinite} row(s) hold an infinite value; " if infinite else ""
        raise _label_error(spec, values, ValueError(f"{problem}a regression target must be a finite number"))
    return encoded


def load_model(model_uri: str) -> Any:
    """A logged model as pyfunc, as serving loads it.

    ``skops.io`` is imported first without its import-time ``sys.modules`` probe warnings (see
    :func:`~mlops_airflow.core.served_model.import_skops_io`): a model logged before its ``served_model.py``
    did that itself would otherwise fill the task log with them.
    """
    import mlflow

    from mlops_airflow.core.served_model import import_skops_io

    import_skops_io()
    return mlflow.pyfunc.load_model(model_uri)


def model_threshold(model: Any) -> float:
    """The binary decision threshold a logged model was trained with (0.5 for models that do not say)."""
    config = getattr(model, "model_config", None) or {}
    try:
        return float(config.get("threshold", 0.5))
    except (TypeError, ValueError):
        return 0.5


def predict_frame(model: Any, x: pd.DataFrame) -> Any:
    """``model.predict(x)`` for rows already typed by :func:`model_input`.

    A model of this package (:class:`~mlops_airflow.core.served_model.SpecModel`) is called directly: MLflow's
    check of its ``Any`` numeric columns goes value by value (measured: 0.3 s of 0.95 s for 66,667 rows with
    six numeric features), and :func:`model_input` has already typed every column by the spec. Any other model
    goes through MLflow.
    """
    unwrap = getattr(model, "unwrap_python_model", None)
    if unwrap is not None:
        try:
            inner = unwrap()
        except Exception:  # not a python_function model: MLflow's own path
            inner = None
        if type(inner).__name__ == "SpecModel" and hasattr(inner, "pipeline"):
            return inner.predict(None, x)
    return model.predict(x)


def predict_rows(spec: ModelSpec, model: Any, rows: pd.DataFrame) -> tuple[Any, np.ndarray]:
    """A logged model's answer for raw ``rows`` and its score array (same probabilities for every user)."""
    output = predict_frame(model, model_input(spec, rows))
    return output, output_scores(output, spec)
