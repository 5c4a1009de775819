"""The model MLflow logs for a model spec: a scikit-learn pipeline behind a pyfunc that answers with labels
and named class probabilities.

This file is logged with every model as MLflow "model from code": it travels in the model's artifacts, so
loading or serving the model (``mlflow.pyfunc.load_model``, ``mlflow models serve``, the model server) needs
mlflow, scikit-learn, skops, numpy and pandas, never this package. It therefore imports nothing from
``mlops_airflow``; training imports :func:`prepare_features` and :func:`model_output` from here, so the
trained and the served model compute the same thing.

Output (a DataFrame, one row per input row):

* classification: ``prediction`` (the label, one of the spec's values) and ``proba_<class>`` per class in the
  spec's order; a binary model predicts the positive label when its probability reaches the threshold
  chosen at training time;
* regression: ``prediction``.
"""

from __future__ import annotations

import warnings
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

TRUE_TEXT = {"true", "t", "yes", "y", "1"}
FALSE_TEXT = {"false", "f", "no", "n", "0"}


def proba_column(value: Any) -> str:
    """The output column of a class's probability: ``proba_<class>``."""
    return f"proba_{value}"


def category_text(value: Any) -> str | None:
    """A category as text; a code read back as float because of a gap (``3.0``) is the same category ``3``."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _category_texts(values: pd.Series) -> pd.Series:
    """:func:`category_text` of every value, computed once per distinct value (missing -> ``None``)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    texts = np.empty(len(uniques) + 1, dtype=object)
    texts[:-1] = [category_text(u) for u in uniques]
    texts[-1] = None  # code -1: missing
    return pd.Series(texts[codes], index=values.index, dtype=object)


def _boolean(values: pd.Series) -> pd.Series:
    if values.dtype == bool:
        return values.astype("float64")
    text = values.astype("string").str.strip().str.lower()
    out = pd.Series(np.nan, index=values.index, dtype="float64")
    out[text.isin(TRUE_TEXT).fillna(False).astype(bool)] = 1.0
    out[text.isin(FALSE_TEXT).fillna(False).astype(bool)] = 0.0
    return out


def _datetime_parts(values: pd.Series, name: str, parts: list[str]) -> dict[str, pd.Series]:
    moments = pd.to_datetime(values, errors="coerce", utc=True)
    out = {}
    for part in parts:
        if part == "is_weekend":
            series = (moments.dt.dayofweek >= 5).astype("float64").where(moments.notna())
        else:
            series = getattr(moments.dt, part).astype("float64")
        out[f"{name}__{part}"] = series
    return out


def prepare_features(frame: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """The pipeline's input from raw rows: model features in spec order, typed per feature type.

    numeric -> float64; categorical -> object (missing as None); boolean -> 0.0/1.0 (missing NaN);
    datetime -> one float column per part (``<name>__<part>``). Columns not in the spec are ignored.
    """
    columns: dict[str, Any] = {}
    for feature in config["features"]:
        name, kind = feature["name"], feature["type"]
        values = frame[name]
        if kind == "numeric":
            columns[name] = pd.to_numeric(values, errors="coerce").astype("float64", copy=False)
        elif kind == "categorical":
            columns[name] = _category_texts(values)
        elif kind == "boolean":
            columns[name] = _boolean(values)
        else:
            columns.update(_datetime_parts(values, name, feature["parts"]))
    return pd.DataFrame(columns, index=frame.index)


def check_numbers(frame: pd.DataFrame, config: dict[str, Any]) -> None:
    """Refuse a numeric feature value that is not a number (text such as ``"n/a"``), naming the column.

    Integer, float and boolean columns pass as they are (missing values too); a column of Python objects
    (JSON input) passes when each value that is present reads as a number.
    """
    for feature in config["features"]:
        name = feature["name"]
        if feature["type"] != "numeric" or name not in frame.columns or frame[name].dtype.kind in "biuf":
            continue
        values = frame[name]
        numbers = pd.to_numeric(values, errors="coerce")
        bad = values[numbers.isna() & values.notna()]
        if len(bad):
            shown = ", ".join(repr(v) for v in pd.unique(bad.astype(object))[:3])
            raise ValueError(f"column {name!r} is a numeric feature: {len(bad)} value(s) are not numbers ({shown})")


def label_key(value: Any) -> tuple[str, Any]:
    """A label value with its kind, so that ``True``, ``1`` and ``"1"`` never match one another.

    The same rule as ``mlops_airflow.core.evaluation`` (this file may not import the package; a unit test
    keeps the two equal).
    """
    if isinstance(value, bool | np.bool_):
        return ("bool", bool(value))
    if isinstance(value, int | np.integer):
        return ("int", int(value))
    if isinstance(value, float | np.floating):
        return ("int", int(value)) if np.isfinite(value) and float(value).is_integer() else ("float", value)
    if isinstance(value, str | np.str_):
        return ("str", str(value))
    return ("other", repr(value))


def class_probabilities(pipeline: Any, x: pd.DataFrame, classes: list[Any]) -> np.ndarray:
    """``predict_proba`` with one column per spec class, in spec order (0 for a class the fit never saw).

    A class the model was fitted on that is none of the spec's classes is refused (``ValueError``): its
    probabilities would be dropped and the spec's classes answered with 0 (a model fitted on labels of another
    type, e.g. ``1.0`` floats for ``true``/``false`` values, would say 0 for every class).
    """
    proba = np.asarray(pipeline.predict_proba(x), dtype="float64")
    fitted = {label_key(seen): i for i, seen in enumerate(pipeline.classes_)}
    named = {label_key(c) for c in classes}
    unknown = sorted(repr(seen.item() if isinstance(seen, np.generic) else seen) for seen in pipeline.classes_
                     if label_key(seen) not in named)  # fmt: skip
    if unknown:
        raise ValueError(
            f"the model was fitted on class(es) {', '.join(unknown)} that are not among the spec's label values "
            f"{classes!r}: it cannot answer for them"
        )
    full = np.zeros((len(x), len(classes)), dtype="float64")
    for j, value in enumerate(classes):
        i = fitted.get(label_key(value))
        if i is not None:
            full[:, j] = proba[:, i]
    return full


def model_output(pipeline: Any, raw: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """What the logged model answers for ``raw`` rows (see the module docstring)."""
    x = prepare_features(raw, config)
    if config["kind"] == "regression":
        return pd.DataFrame({"prediction": np.asarray(pipeline.predict(x), dtype="float64").ravel()}, index=raw.index)
    classes = list(config["classes"])
    proba = class_probabilities(pipeline, x, classes)
    if config["kind"] == "binary":
        positive = int(config["positive_index"])
        chosen = np.where(proba[:, positive] >= float(config["threshold"]), positive, 1 - positive)
    else:
        chosen = proba.argmax(axis=1)
    labels = pd.Series(np.asarray(classes, dtype=object)[chosen], index=raw.index).infer_objects()
    out = {"prediction": labels}
    out.update({proba_column(c): proba[:, j] for j, c in enumerate(classes)})
    return pd.DataFrame(out, index=raw.index)


def import_skops_io() -> Any:
    """``skops.io``, imported without the warnings and most of the time its import costs in an Airflow process.

    At import, skops names every numpy and scipy ufunc's module (its default trusted types) with
    ``whichmodule``: an object without ``__module__`` is looked up with ``getattr`` on every module in
    ``sys.modules``, in import order. An Airflow task process holds some 4,000 modules, several of them lazy or
    deprecated shims that answer each probe slowly or with a ``DeprecatedImportWarning`` (about 1,160
    warnings, 3,500 task-log lines): the import took 3.6 s there against 0.65 s in a bare interpreter. During
    the import the lookup tries numpy's and scipy's own modules first, where every ufunc is defined, and
    falls back to the full scan for anything else; the names found are the ones a bare interpreter finds, so
    trust lists written here load anywhere. Later imports are free (the module is cached).
    """
    import sys

    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    hook = _SkopsUtilsHook()
    sys.meta_path.insert(0, hook)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"skops\.io\._utils")
            import skops.io
    finally:
        sys.meta_path.remove(hook)
        hook.restore()
    return skops.io


class _SkopsUtilsHook:
    """Import hook: once ``skops.io._utils`` has run, its ``whichmodule`` looks in numpy and scipy first.

    The package's ``__init__`` computes the trusted type names on import, so the lookup is swapped in as soon
    as ``_utils`` exists and put back (:meth:`restore`) when the import is over.
    """

    def __init__(self) -> None:
        self.module: Any = None
        self.scan: Any = None

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "skops.io._utils":
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            self.module, self.scan = module, module.whichmodule
            module.whichmodule = _ufunc_home_first(module.whichmodule)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec

    def restore(self) -> None:
        if self.module is not None:
            self.module.whichmodule = self.scan


def _ufunc_home_first(scan: Any) -> Any:
    """``whichmodule`` that looks in numpy's and scipy's modules before scanning every loaded module."""
    import sys

    homes: list[tuple[str, Any]] = []
    seen = [0]

    def whichmodule(obj: Any, name: str) -> str:
        module_name = getattr(obj, "__module__", None)
        if module_name is not None:
            return str(module_name)
        if seen[0] != len(sys.modules):  # modules imported since the last call: list the homes again
            seen[0] = len(sys.modules)
            homes[:] = [
                (key, module)
                for key, module in list(sys.modules.items())
                if module is not None and key.partition(".")[0] in ("numpy", "scipy")
            ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for candidate, module in homes:
                if getattr(module, name, None) is obj:
                    return candidate
        return str(scan(obj, name))

    return whichmodule


class SpecModel(PythonModel):
    """pyfunc of a spec's pipeline: ``predict`` returns :func:`model_output`."""

    def load_context(self, context: Any) -> None:
        skops_io = import_skops_io()
        self.config = dict(context.model_config)
        self.pipeline = skops_io.load(context.artifacts["pipeline"], trusted=list(self.config["trusted_types"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        check_numbers(model_input, self.config)  # the signature lets any value through numeric columns
        return model_output(self.pipeline, model_input, self.config)


mlflow.models.set_model(SpecModel())
