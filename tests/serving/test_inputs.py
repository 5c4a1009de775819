"""The model input a request becomes (serving/inputs.py), for every feature type, without a server."""

from __future__ import annotations

import math

import pytest
from serving_support import REPO

from mlops_airflow.core.config import load_model_spec
from mlops_airflow.serving.inputs import InputError, check_rows


def test_checked_rows_are_typed_per_feature_type() -> None:
    declared = load_model_spec(REPO / "include" / "examples" / "product_tier.yaml")
    # categories lifted so that a number sent to a categorical feature shows how it is typed
    features = [f.model_copy(update={"categories": None}) for f in declared.features]
    spec = declared.model_copy(update={"features": features})
    kinds = {f.name: f.type for f in spec.features if f.use != "drop"}
    assert set(kinds.values()) == {"numeric", "categorical", "boolean", "datetime"}
    samples = {"numeric": [3, 2.5], "categorical": ["a", 7], "boolean": ["yes", False],
               "datetime": ["2024-01-02T03:04:05Z", "2024-05-06"]}  # fmt: skip
    frame = check_rows(spec, {name: list(samples[kind]) for name, kind in kinds.items()}, 10).rows
    assert list(frame.columns) == spec.model_features and len(frame) == 2
    for name, kind in kinds.items():
        values = frame[name].tolist()
        if kind == "numeric":
            assert frame[name].dtype == "float64" and values == [3.0, 2.5]
        elif kind == "categorical":
            assert frame[name].dtype == object and values == ["a", "7"]
        elif kind == "boolean":
            assert frame[name].dtype == object and values == [True, False]
        else:
            assert frame[name].dtype == object and values == ["2024-01-02T03:04:05+0000", "2024-05-06T00:00:00+0000"]


def test_nulls_become_nan_or_none_where_allowed_and_are_refused_elsewhere() -> None:
    spec = load_model_spec(REPO / "include" / "models" / "credit_default.yaml")
    inside = {f.name: f.min if f.type == "numeric" else (f.categories or ["x"])[0] for f in spec.features}
    columns = {f.name: [None] if f.nullable else [inside[f.name]] for f in spec.features}
    frame = check_rows(spec, columns, 10).rows
    for feature in spec.features:
        if feature.nullable and feature.use != "drop":
            value = frame[feature.name].iloc[0]
            assert math.isnan(value) if feature.type == "numeric" else value is None, feature.name
    refused = next(f for f in spec.features if not f.nullable and f.use != "drop")
    with pytest.raises(InputError, match=f"'{refused.name}'.*nullable: false"):
        check_rows(spec, {**columns, refused.name: [None]}, 10)


def test_a_datetime_is_accepted_only_as_the_iso_text_the_model_then_receives() -> None:
    """pandas reads ``Jan 5 2024``, padded text or ``now`` when parsing one value, but not as ISO-8601: the
    check must refuse what the model's input frame would turn into a null (or into the time of the request)."""
    spec = load_model_spec(REPO / "include" / "examples" / "product_tier.yaml")
    row = {"monthly_spend": 10.0, "visits": 3, "region": "north", "is_member": True}
    accepted = {"2024-01-02": "2024-01-02T00:00:00+0000", "20240102": "2024-01-02T00:00:00+0000",
                "2024-01-02 03:04:05": "2024-01-02T03:04:05+0000",
                "2024-01-02T03:04:05.5Z": "2024-01-02T03:04:05+0000",
                "2024-01-02T03:04:05+05:00": "2024-01-01T22:04:05+0000",
                "2024-01": "2024-01-01T00:00:00+0000"}  # fmt: skip
    frame = check_rows(spec, {**{k: [v] * len(accepted) for k, v in row.items()}, "signup_date": list(accepted)}, 10)
    assert frame.rows["signup_date"].tolist() == list(accepted.values())
    for text in ["Jan 5 2024", "  2024-01-02  ", "2024-01-02\x00", "now", "today", "2024-02-30", "1677-01-01",
                 "\u0662\u0660\u0662\u0664-01-02"]:  # fmt: skip
        with pytest.raises(InputError, match=r"'signup_date', row 0.*ISO-8601") as refused:
            check_rows(spec, {**{k: [v] for k, v in row.items()}, "signup_date": [text]}, 10)
        assert refused.value.status == 422, text
