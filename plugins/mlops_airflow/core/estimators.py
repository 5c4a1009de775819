"""Which scikit-learn estimators a model spec may name, checked at parse time without importing sklearn.

A YAML is data, never code (docs/design.md 7): ``estimator.class`` must be a scikit-learn classifier or regressor
that can be built from plain values. The catalogue of those classes and their constructor parameters lives in
:mod:`mlops_airflow.core._sklearn_catalogue`, generated from the installed scikit-learn by
``python -m mlops_airflow.core.estimators --write`` (a test fails when it no longer matches the installed
version). At task time :func:`load_estimator_class` imports the class and checks it again with scikit-learn's
own ``is_classifier`` / ``is_regressor``.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any, Literal

from mlops_airflow.core._sklearn_catalogue import CATALOGUE, SKLEARN_VERSION
from mlops_airflow.core.errors import MlopsError

Kind = Literal["classifier", "regressor"]
CATALOGUE_FILE = Path(__file__).with_name("_sklearn_catalogue.py")


class EstimatorNotAllowed(MlopsError, ValueError):
    """``estimator.class`` names something that is not an allowed scikit-learn estimator."""


def kind_for_task(task: str) -> Kind:
    return "regressor" if task == "regression" else "classifier"


def check_estimator(path: str, task: str) -> dict[str, Any]:
    """The catalogue entry of ``path`` if it is an allowed estimator for ``task``; else :class:`EstimatorNotAllowed`."""
    kind = kind_for_task(task)
    entry = CATALOGUE.get(path)
    if entry is None:
        same_name = sorted(p for p in CATALOGUE if p.rsplit(".", 1)[-1] == path.rsplit(".", 1)[-1])
        hint = f" (did you mean {same_name[0]}?)" if same_name else ""
        raise EstimatorNotAllowed(
            f"{path!r} is not a scikit-learn {kind} that can be built from YAML values{hint}; "
            f"allowed: the public classifiers and regressors of scikit-learn {SKLEARN_VERSION} "
            "(see mlops_airflow/core/_sklearn_catalogue.py)"
        )
    if entry["kind"] != kind:
        raise EstimatorNotAllowed(f"{path!r} is a {entry['kind']}, but the model's task is {task} (needs a {kind})")
    return entry


def check_params(path: str, names: list[str]) -> list[str]:
    """The names among ``names`` that are not constructor parameters of ``path``."""
    allowed = set(CATALOGUE[path]["params"])
    return [n for n in names if n not in allowed]


def load_estimator_class(path: str, task: str) -> type:
    """Import an allowed estimator class at task time and check it with scikit-learn itself."""
    from sklearn.base import BaseEstimator, is_classifier, is_regressor

    check_estimator(path, task)
    module_name, _, cls_name = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, BaseEstimator)):
        raise EstimatorNotAllowed(f"{path!r} is not a scikit-learn estimator class")
    probe = cls()
    wanted = is_regressor if task == "regression" else is_classifier
    if not wanted(probe):
        raise EstimatorNotAllowed(f"{path!r} is not a {kind_for_task(task)}")
    return cls


def _fits_one_label(instance: Any) -> bool:
    """Whether the estimator built with its defaults can fit a model's one label column: scikit-learn can tell
    what it is (a meta-estimator whose estimator defaults to None cannot, and cannot fit either) and it takes a
    single target (``MultiTaskLasso`` and its kin refuse one: "For mono-task outputs, use ElasticNet")."""
    from sklearn.base import is_classifier, is_regressor

    try:
        if not (is_classifier(instance) or is_regressor(instance)):
            return False
        return bool(instance.__sklearn_tags__().target_tags.single_output)
    except (AttributeError, TypeError, ValueError):
        return False


def build_catalogue() -> dict[str, dict[str, Any]]:
    """Every public classifier and regressor of the installed scikit-learn with no required constructor argument."""
    import warnings

    from sklearn.utils import all_estimators
    from sklearn.utils.validation import has_fit_parameter

    catalogue: dict[str, dict[str, Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind in ("classifier", "regressor"):
            for name, cls in all_estimators(type_filter=kind):
                parts = cls.__module__.split(".")
                public = ".".join(parts[:2])  # sklearn.<subpackage>, the documented import path
                if getattr(importlib.import_module(public), name, None) is not cls:
                    continue
                estimator_cls: Any = cls
                params = inspect.signature(estimator_cls.__init__).parameters
                required = [
                    p
                    for p, v in params.items()
                    if p != "self"
                    and v.default is inspect.Parameter.empty
                    and v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)
                ]
                if required:  # meta-estimators need an estimator object: not expressible as data
                    continue
                instance = estimator_cls()
                if not _fits_one_label(instance):
                    continue
                catalogue[f"{public}.{name}"] = {
                    "kind": kind,
                    "params": sorted(p for p in params if p != "self" and params[p].kind is not params[p].VAR_KEYWORD),
                    "predict_proba": hasattr(instance, "predict_proba"),
                    "sample_weight": has_fit_parameter(instance, "sample_weight"),
                }
    return dict(sorted(catalogue.items()))


def render_catalogue() -> str:
    import pprint

    import sklearn

    return (
        '"""Generated by ``python -m mlops_airflow.core.estimators --write`` from the installed scikit-learn.\n\n'
        "Do not edit: the allowed estimator classes of model specs, with their constructor parameters.\n"
        '"""\n\n'
        "from typing import Any\n\n"
        f"SKLEARN_VERSION = {sklearn.__version__!r}\n\n"
        f"CATALOGUE: dict[str, dict[str, Any]] = {pprint.pformat(build_catalogue(), width=110, sort_dicts=True)}\n"
    )


if __name__ == "__main__":
    text = render_catalogue()
    if "--write" in sys.argv:
        CATALOGUE_FILE.write_text(text)
        print(f"wrote {CATALOGUE_FILE}")
    else:
        print(text)
