"""``predict_credit_default`` scores every row of a batch, and marks those outside the spec's domain as the model
server's ``serving.out_of_domain: flag`` does."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mlops_airflow.core import demo_data

pytestmark = [pytest.mark.e2e, pytest.mark.demo_champion]  # each test starts from the first CT run

REGION = "region: 'atlantis' not in categories [north, south, east, west]"
AGE = "age: 900 above max 100"  # a whole number, though the float column reads it back as 900.0


@pytest.fixture
def champion(demo_champion):
    assert demo_champion.state == "success", demo_champion.tasks


def test_rows_outside_the_domain_are_scored_and_marked(champion, run_dag, mlops_home):
    scoring = mlops_home / "data" / "scoring" / "credit_default"
    scoring.mkdir(parents=True)
    frame = demo_data.generate_batch(20, n_rows=40).drop(columns=["default"])
    frame.loc[3, "region"] = "atlantis"  # not among the region's categories
    frame.loc[7, "age"] = 900  # above age's max 100
    frame.loc[11, ["region", "age"]] = ["atlantis", 900]  # both: two marks on one row
    frame.loc[15, "income"] = math.nan  # missing (nullable): not outside the domain
    frame.to_csv(scoring / "batch_2026-01-21.csv", index=False)

    result = run_dag("predict_credit_default")
    assert result.state == "success", result.tasks
    out = result.xcom("predict")
    assert out["written"] == 1 and out["out_of_domain_rows"] == 3
    predictions = pd.read_parquet(out["files"][0].removeprefix("file://"))

    assert list(predictions["application_id"]) == list(frame["application_id"])  # every row, in order
    assert predictions["prediction"].between(0, 1).all()
    marks = predictions["out_of_domain"]
    assert marks[3] == REGION
    assert marks[7] == AGE
    assert marks[11] == f"{AGE}; {REGION}"  # in the spec's feature order, as the server lists them
    assert math.isnan(predictions.loc[15, "income"]) and marks[15] is None
    assert marks.drop(index=[3, 7, 11]).isna().all(), marks.dropna()
