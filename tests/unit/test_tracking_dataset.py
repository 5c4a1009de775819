"""The training and evaluation datasets logged with a CT run carry the schema MLflow itself would infer."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from mlops_airflow.core import tracking
from mlops_airflow.core.demo_data import generate_batch


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dataset_schema_equals_mlflows_own_inference_with_gaps_beyond_the_sample():
    frame = pd.concat([generate_batch(day, n_rows=2_000) for day in range(3)], ignore_index=True)
    frame["all_missing"] = np.nan
    frame.loc[5_000, "region"] = None  # a gap only past the sampled rows: region is not required
    frame.loc[4_000, "late_payments"] = np.nan
    ours = tracking.pandas_dataset(frame, source="snap/train", targets="default", name="m-train", digest="abc")
    theirs = mlflow.data.from_pandas(frame, source="snap/train", targets="default", name="m-train", digest="abc")
    assert ours.schema == theirs.schema
    region = next(c for c in ours.schema.inputs if c.name == "region")
    assert region.required is False and region.type.name == "string"
    assert ours.to_dict() == theirs.to_dict()
