"""The spec's domain (core/domain.py): one rule, read by the model server and by batch scoring alike."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from mlops_airflow.core.config import load_model_spec
from mlops_airflow.core.domain import frame_marks
from mlops_airflow.core.spec import ModelSpec
from mlops_airflow.serving.inputs import check_rows

SPEC = Path(__file__).resolve().parents[2] / "include" / "models" / "credit_default.yaml"


def credit_default(out_of_domain: str = "reject", **categories: list[str]) -> ModelSpec:
    spec = load_model_spec(SPEC)
    features = [f.model_copy(update={"categories": categories[f.name]}) if f.name in categories else f
                for f in spec.features]  # fmt: skip
    serving = spec.serving.model_copy(update={"out_of_domain": out_of_domain})
    return spec.model_copy(update={"features": features, "serving": serving})


def inside(spec: ModelSpec, n: int) -> dict[str, list]:
    return {f.name: [f.min if f.type == "numeric" else (f.categories or ["x"])[0]] * n for f in spec.features}


def test_batch_rows_outside_the_domain_are_marked_and_the_rest_are_not() -> None:
    spec = credit_default()
    columns = inside(spec, 6)
    columns["region"][1] = "atlantis"
    columns["age"][2] = 900
    columns["age"][3] = 100  # max itself: inside (inclusive)
    columns["age"][4] = 17.5
    columns["region"][5], columns["age"][5] = "atlantis", 900
    columns["income"] = [math.nan, None, 10**12, 0, math.nan, 1.0]  # missing is not outside; no max declared
    assert frame_marks(spec, pd.DataFrame(columns)) == [
        None,
        "region: 'atlantis' not in categories [north, south, east, west]",
        "age: 900 above max 100",
        None,
        "age: 17.5 below min 18",
        "age: 900 above max 100; region: 'atlantis' not in categories [north, south, east, west]",
    ]


def test_integer_coded_categories_are_compared_as_text() -> None:
    spec = credit_default(region=["3", "4", "True"])
    frame = pd.DataFrame(inside(spec, 6)).astype({"region": object})
    frame["region"] = [3, 3.0, "4", True, 5.0, None]
    marks = frame_marks(spec, frame)
    assert marks[:4] == [None] * 4 and marks[5] is None
    assert marks[4] == "region: '5' not in categories [3, 4, True]"


def test_the_server_flags_the_same_rows_with_the_same_text() -> None:
    spec = credit_default("flag", employment_type=[f"kind_{i}" for i in range(12)])
    columns = inside(spec, 4)
    columns["employment_type"][0] = "x" * 60  # long text: cut as the server cuts it
    columns["debt_ratio"][1] = 5.5
    columns["late_payments"][2] = -1
    served = check_rows(spec, {k: list(v) for k, v in columns.items()}, 10).out_of_domain
    assert served is not None
    assert frame_marks(spec, pd.DataFrame(columns)) == ["; ".join(found) or None for found in served]
    assert served[0] == [f"employment_type: '{'x' * 40}...' not in categories [kind_0, kind_1, kind_2, kind_3, "
                         "kind_4, kind_5, kind_6, kind_7, kind_8, kind_9, ... (12 in all)]"]  # fmt: skip
