"""The spec's domain of a feature, and the text that names a value outside it.

A categorical value must be one of the feature's ``categories`` (compared as text: ``3``, ``3.0`` and ``"3"``
are the category ``3``), a numeric value within its ``min``/``max`` (inclusive). A feature that declares
neither is not checked, and a missing value (null, NaN) is never outside the domain: whether it is allowed is
validation's rule (``nullable``), not this one.

One rule for both readers of it: the model server (:mod:`mlops_airflow.serving.inputs`, which refuses or flags
such rows per ``serving.out_of_domain``) and batch scoring (``predict_<model>``, which marks them in its
``out_of_domain`` column and scores them all). Both write a value outside as :func:`mark` does:
``region: 'atlantis' not in categories [north, south, east, west]``, ``age: 900 above max 100``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mlops_airflow.core.encoding import clean_text
from mlops_airflow.core.spec import FeatureSpec, ModelSpec

if TYPE_CHECKING:
    import pandas as pd

SHOWN_CHARS = 40
SHOWN_CATEGORIES = 10
LONG_NUMBER = 10**SHOWN_CHARS
#: Between the marks of one row that lies outside the domain in several features (as the request log joins them).
MARK_SEPARATOR = "; "
#: Whole numbers a float64 holds exactly: shown as integers in batch marks.
WHOLE_BELOW = 2**53


def shown(value: Any) -> Any:
    """``value`` as a message may echo it: JSON-safe, short (NaN and infinities as their JSON-ish text, a long
    number or text cut, a list or object by its type)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= LONG_NUMBER:
        text = str(value)
        return f"{text[:SHOWN_CHARS]}... ({len(text.lstrip('-'))} digits)"
    if isinstance(value, str):
        text = clean_text(value)
        return text[:SHOWN_CHARS] + "..." if len(text) > SHOWN_CHARS else text
    if isinstance(value, int | float | bool) or value is None:
        return value
    return type(value).__name__


class Domain:
    """The values a feature's spec declares (``categories``, or ``min``/``max``); ``outside`` says why a
    typed value (category text, or a number) is not among them, or None."""

    def __init__(self, feature: FeatureSpec) -> None:
        self.categories = set(feature.categories) if feature.categories is not None else None
        self.listed = ", ".join(feature.categories[:SHOWN_CATEGORIES]) if feature.categories else ""
        if feature.categories and len(feature.categories) > SHOWN_CATEGORIES:
            self.listed += f", ... ({len(feature.categories)} in all)"
        self.min, self.max = feature.min, feature.max

    @property
    def declared(self) -> bool:
        return self.categories is not None or self.min is not None or self.max is not None

    def outside(self, value: Any) -> str | None:
        if self.categories is not None:
            return None if value in self.categories else f"not in categories [{self.listed}]"
        if self.min is not None and value < self.min:
            return f"below min {self.min:g}"
        if self.max is not None and value > self.max:
            return f"above max {self.max:g}"
        return None


def mark(name: str, value: Any, why: str) -> str:
    """What a row's ``name`` value outside the domain is marked with: ``<name>: <value> <why>``."""
    return f"{name}: {shown(value)!r} {why}"


def _missing(value: Any) -> bool:
    import pandas as pd

    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _typed_values(feature: FeatureSpec, values: pd.Series) -> list[Any]:
    """``values`` as :meth:`Domain.outside` compares them, None where missing or not of the feature's type:
    a category as the model's encoder reads it (:func:`mlops_airflow.core.served_model.category_text`: ``3.0``
    is the category ``3``), a number as the model reads it (text ``"900"`` is 900). A whole number is shown as
    one (``900``, as a client sends it), though a column with a gap or a fraction reads it back as ``900.0``."""
    import pandas as pd

    from mlops_airflow.core.served_model import category_text

    if feature.type == "categorical":
        return [None if _missing(value) else category_text(value) for value in values.astype("object").tolist()]
    numbers = pd.to_numeric(values, errors="coerce").astype("float64").tolist()
    return [_number(number) if math.isfinite(number) else None for number in numbers]


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() and abs(value) < WHOLE_BELOW else value


def frame_marks(spec: ModelSpec, frame: pd.DataFrame) -> list[str | None]:
    """Per row of ``frame`` (a batch with the model's feature columns), what of it lies outside the spec's
    domain: the :func:`mark` of each such feature, in the spec's order, joined by :data:`MARK_SEPARATOR`;
    None for a row inside it. Features the spec drops, and feature types other than categorical and numeric,
    are not checked (the model server does not check them either); nothing is refused or removed."""
    marks: list[list[str]] = [[] for _ in range(len(frame))]
    for feature in spec.features:
        domain = Domain(feature)
        if feature.use == "drop" or feature.type not in ("categorical", "numeric") or not domain.declared:
            continue
        if feature.name not in frame.columns:
            continue
        for row, value in enumerate(_typed_values(feature, frame[feature.name])):
            if value is None:
                continue
            why = domain.outside(value)
            if why is not None:
                marks[row].append(mark(feature.name, value, why))
    return [MARK_SEPARATOR.join(found) if found else None for found in marks]
