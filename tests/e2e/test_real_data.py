"""A team's first day with its own data, through ``ct_``, ``predict_`` and ``monitor_`` with ``dag.test()``.

The data is shaped like a support team's (``tests/e2e/models/ticket_outcome.yaml``): one CSV per real day with a
few dozen tickets, string outcomes of which ``escalated`` is rare, plan codes that are integers (a day with a
gap reads them back as floats), booleans as category codes, columns the model does not use, and outcomes that
arrive three days late: the newest days land without them, and a few older tickets never get one.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.e2e
MODELS = Path(__file__).parent / "models"
MODEL = "ticket_outcome"
START = dt.date(2026, 2, 1)
PLANS = [3, 4, 5, 6, 8]
OUTCOMES = np.array(["resolved", "reopened", "escalated"], dtype=object)
FEATURES = ["wait_minutes", "plan_code", "first_contact", "channel"]


def day_file(day: int) -> str:
    return f"tickets_{START + dt.timedelta(days=day):%Y-%m-%d}.csv"


def tickets(day: int, *, labelled: bool = True, plan_gaps: bool | None = None) -> pd.DataFrame:
    """One day of tickets (30 to 49). Waits are whole minutes with gaps; plan codes have gaps on even days;
    every fifth day one ticket never gets its outcome; ``labelled=False``: no outcome yet on any ticket."""
    rng = np.random.default_rng(1000 + day)
    n = int(rng.integers(30, 50))
    plan = rng.choice(PLANS, n, p=[0.4, 0.25, 0.15, 0.12, 0.08])
    wait = rng.gamma(2.0, 15.0, n).round()
    first = rng.random(n) < 0.6
    channel = rng.choice(["email", "phone", "chat"], n, p=[0.5, 0.3, 0.2])
    logits = np.column_stack(
        [
            np.zeros(n),
            -1.0 + 0.015 * wait - 0.9 * first,
            -4.0 + 0.03 * wait + 1.8 * (plan >= 6) + 0.8 * (channel == "phone"),
        ]
    )
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    outcome = OUTCOMES[(rng.random((n, 1)) > proba.cumsum(axis=1)).sum(axis=1)]
    frame = pd.DataFrame(
        {
            "ticket_id": [f"T{day:03d}-{i:03d}" for i in range(n)],
            "opened_on": (START + dt.timedelta(days=day)).isoformat(),
            "wait_minutes": np.where(rng.random(n) < 0.1, np.nan, wait),
            "plan_code": plan.astype("float64"),
            "first_contact": first,
            "channel": channel,
            "agent_note": "see thread",
            "outcome": outcome,
        }
    )
    if plan_gaps if plan_gaps is not None else day % 2 == 0:
        frame.loc[rng.random(n) < 0.1, "plan_code"] = np.nan
    else:
        frame["plan_code"] = plan  # an integer column, as a day without a gap lands
    if not labelled:
        frame["outcome"] = None
    elif day % 5 == 0:
        frame.loc[0, "outcome"] = None
    return frame


def land(folder: Path, days: range, *, unlabelled: range = range(0)) -> dict[int, pd.DataFrame]:
    folder.mkdir(parents=True, exist_ok=True)
    frames = {}
    for day in days:
        frames[day] = tickets(day, labelled=day not in unlabelled)
        frames[day].to_csv(folder / day_file(day), index=False)
    return frames


def labelled_rows(frames: dict[int, pd.DataFrame], days: range) -> int:
    return sum(int(frames[d]["outcome"].notna().sum()) for d in days)


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(MODELS))
    return MODELS


def test_daily_files_train_on_a_window_in_days_with_late_labels_and_integer_codes(
    run_dag, mlops_home, models, mlflow_client
):
    import mlflow

    landing = mlops_home / "data" / "landing" / MODEL
    frames = land(landing, range(42), unlabelled=range(39, 42))  # 6 weeks; the newest 3 days await outcomes

    first = run_dag(f"ct_{MODEL}")

    assert first.state == "success", first.tasks
    snapshot = first.xcom("snapshot")
    # 7 days for evaluation, the 28 before them for training: 35 daily files, not 14 + 1
    assert snapshot["batches"] == 35
    assert snapshot["eval_batches"] == [day_file(d) for d in range(35, 42)]
    assert snapshot["time_bounds"] == {
        "column": "opened_on",
        "train": ["2026-02-08T00:00:00+00:00", "2026-03-08T00:00:00+00:00"],
        "eval": ["2026-03-08T00:00:00+00:00", "2026-03-15T00:00:00+00:00"],
    }
    # trained and evaluated on the tickets with an outcome only; the others are counted
    assert snapshot["train_rows"] == labelled_rows(frames, range(7, 35))
    assert snapshot["eval_rows"] == labelled_rows(frames, range(35, 42)) == labelled_rows(frames, range(35, 39))
    unlabelled = sum(len(frames[d]) for d in range(39, 42)) + len([d for d in range(7, 39) if d % 5 == 0])
    assert snapshot["unlabelled_rows"] == unlabelled
    validation = first.xcom("validate_data")
    assert validation["unlabelled_rows"] == unlabelled
    assert validation["awaiting_labels"] == [day_file(d) for d in range(39, 42)]  # the newest 3 days
    assert validation["ignored_columns"] == ["ticket_id", "agent_note"]
    parent = mlflow_client.get_run(snapshot["mlflow_run_id"])
    assert parent.data.metrics["unlabelled_rows"] == unlabelled

    # plan codes are matched by value: 3, "3" and 3.0 are one plan; a missing plan is the commonest one (3)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    rows = pd.DataFrame(
        {"wait_minutes": [20.0, 55.0, 5.0, 20.0], "first_contact": [True, False, True, True],
         "channel": ["email", "phone", "chat", "email"]}
    )  # fmt: skip
    as_int = model.predict(rows.assign(plan_code=[3, 8, 5, 3]))
    for codes in (["3", "8", "5", "3"], [3.0, 8.0, 5.0, 3.0], [None, "8", "5", "3"]):
        answer = model.predict(rows.assign(plan_code=pd.Series(codes, dtype=object)))
        pd.testing.assert_frame_equal(answer, as_int)
    assert as_int["prediction"].isin(OUTCOMES).all()

    # the outcomes land: each day's file is landed again under its name, now with them
    for day in range(39, 42):
        frames[day] = tickets(day)
        frames[day].to_csv(landing / day_file(day), index=False)

    second = run_dag(f"ct_{MODEL}")

    assert second.state == "success", second.tasks
    again = second.xcom("snapshot")
    assert again["content_hash"] != snapshot["content_hash"]
    assert again["eval_rows"] == labelled_rows(frames, range(35, 42)) > snapshot["eval_rows"]
    assert again["unlabelled_rows"] == len([d for d in range(7, 42) if d % 5 == 0])
    assert second.xcom("validate_data")["unlabelled_rows"] == again["unlabelled_rows"]

    # batch scoring: the same tickets score the same whether a gap turned their plan codes into floats
    scoring = mlops_home / "data" / "scoring" / MODEL
    scoring.mkdir(parents=True)
    whole = tickets(42, plan_gaps=False).drop(columns=["outcome"])
    with_gap = pd.concat([whole, whole.head(1).assign(plan_code=np.nan)], ignore_index=True)
    whole.to_csv(scoring / "a_whole.csv", index=False)
    with_gap.to_csv(scoring / "b_with_gap.csv", index=False)
    assert pd.read_csv(scoring / "b_with_gap.csv")["plan_code"].dtype == "float64"

    scored = run_dag(f"predict_{MODEL}")

    assert scored.state == "success", scored.tasks
    out = mlops_home / "storage" / MODEL / "predictions"
    a, b = (pd.read_parquet(out / f"{name}.parquet") for name in ("a_whole", "b_with_gap"))
    proba = [f"proba_{c}" for c in OUTCOMES]
    pd.testing.assert_frame_equal(a[["prediction", *proba]], b[["prediction", *proba]].head(len(a)))

    # the monitor compares a day without plan gaps (integers) with a window that had them (floats): same codes
    tickets(42, plan_gaps=False).to_csv(landing / day_file(42), index=False)

    monitored = run_dag(f"monitor_{MODEL}")

    assert monitored.state == "success", monitored.tasks
    report = monitored.xcom("monitor")
    assert "plan_code" not in report["drifted_features"], report
    assert "first_contact" not in report["drifted_features"], report
    assert report["live_metric"] is not None
