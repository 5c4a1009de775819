"""The demo generator spreads a shift over days (a step, a gradual ramp, a seasonal wave) and can make applicants
alike (a covariate shift towards the decision boundary, the concept unchanged)."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pandas as pd
import pytest

from mlops_airflow.core import demo_data


def test_shift_shapes_over_days() -> None:
    step = [demo_data.shift_on(d, shape="step", start=3) for d in range(6)]
    assert step == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    ramp = [demo_data.shift_on(d, shape="gradual", start=2, length=4) for d in range(9)]
    assert ramp == [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    wave = [demo_data.shift_on(d, shape="seasonal", start=1, length=4) for d in range(7)]
    assert wave == pytest.approx([0.0, 0.0, 0.5, 1.0, 0.5, 0.0, 0.5])


@pytest.mark.parametrize(("kwargs", "rule"), [({"shape": "sudden"}, "choose one of"), ({"length": 0}, "at least 1")])
def test_bad_shift_shape_is_refused(kwargs: dict[str, object], rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        demo_data.shift_on(5, **kwargs)  # type: ignore[arg-type]


def test_cli_writes_a_gradual_shift(tmp_path: Path) -> None:
    args = [str(tmp_path), "--days", "5", "--rows", "200", "--feature-shift", "1", "--concept-shift", "0.5"]
    demo_data.main([*args, "--drift-shape", "gradual", "--drift-start", "1", "--drift-length", "2"])
    for day, share in enumerate([0.0, 0.0, 0.5, 1.0, 1.0]):
        landed = pd.read_csv(tmp_path / demo_data.batch_file_name(day))
        expected = demo_data.generate_batch(day, n_rows=200, feature_shift=share, concept_shift=0.5 * share)
        pd.testing.assert_frame_equal(landed, pd.read_csv(io.StringIO(expected.to_csv(index=False))))
    assert (tmp_path / f"batch_{(demo_data.DEFAULT_START + dt.timedelta(days=4)).isoformat()}.csv").exists()


def test_toward_center_is_deterministic_and_makes_applicants_alike() -> None:
    plain = demo_data.generate_batch(12, n_rows=2000)
    pulled = demo_data.generate_batch(12, n_rows=2000, toward_center=0.8)
    pd.testing.assert_frame_equal(pulled, demo_data.generate_batch(12, n_rows=2000, toward_center=0.8))
    pd.testing.assert_frame_equal(plain, demo_data.generate_batch(12, n_rows=2000, toward_center=0.0))
    assert list(pulled.columns) == list(plain.columns)
    assert (pulled.dtypes == plain.dtypes).all()
    for column in ("age", "income", "debt_ratio", "credit_lines", "late_payments", "utilization"):
        center = float(demo_data.POPULATION_CENTER[column])  # each applicant 80 % of the way to the median
        expected = center + 0.2 * (plain[column] - center)
        assert (pulled[column] - expected).abs().max() <= 0.5, column  # rounded as drawn (whole years, counts)
        assert pulled[column].std() < 0.25 * plain[column].std(), column
    for column in ("employment_type", "region", "home_ownership"):
        share = (pulled[column] == demo_data.POPULATION_CENTER[column]).mean()
        assert share > 0.8 > (plain[column] == demo_data.POPULATION_CENTER[column]).mean(), column


def _calibration_gaps(frame: pd.DataFrame) -> list[float]:
    """Observed default rate minus the usual concept's probability, in five bins of that probability."""
    import numpy as np

    rows = frame.dropna(subset=["income", "employment_type"])
    probability = 1 / (1 + np.exp(-demo_data.default_logit(rows, 0.0)))
    edges = np.quantile(probability, np.linspace(0, 1, 6))
    bins = np.clip(np.searchsorted(edges, probability, side="right") - 1, 0, 4)
    labels = rows["default"].to_numpy()
    return [float(labels[bins == b].mean() - probability[bins == b].mean()) for b in range(5)]


def test_toward_center_keeps_the_concept_and_lowers_the_achievable_roc_auc() -> None:
    from sklearn.metrics import roc_auc_score

    plain = demo_data.generate_batch(3, n_rows=40_000)
    pulled = demo_data.generate_batch(3, n_rows=40_000, toward_center=0.8)
    changed = demo_data.generate_batch(3, n_rows=40_000, toward_center=0.8, concept_shift=1.0)
    # P(default | features) is the usual concept on the pulled applicants (a concept change is not) ...
    assert max(abs(gap) for gap in _calibration_gaps(pulled)) < 0.025
    assert max(abs(gap) for gap in _calibration_gaps(changed)) > 0.05
    # ... yet even the concept itself ranks the alike applicants worse: the degradation is real.
    auc = {}
    for name, frame in (("plain", plain), ("pulled", pulled)):
        rows = frame.dropna(subset=["income", "employment_type"])
        auc[name] = roc_auc_score(rows["default"], demo_data.default_logit(rows, 0.0))
    assert auc["plain"] - auc["pulled"] > 0.1, auc


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_toward_center_is_refused(strength: float) -> None:
    with pytest.raises(ValueError, match=r"demo batch day 4: toward_center .* between 0 \(no pull\) and 1"):
        demo_data.generate_batch(4, n_rows=10, toward_center=strength)


def test_cli_spreads_toward_center_over_the_days(tmp_path: Path) -> None:
    args = [str(tmp_path), "--days", "3", "--rows", "200", "--toward-center", "0.8", "--drift-shape", "step"]
    demo_data.main([*args, "--drift-start", "1"])
    for day, share in enumerate([0.0, 0.8, 0.8]):
        landed = pd.read_csv(tmp_path / demo_data.batch_file_name(day))
        expected = demo_data.generate_batch(day, n_rows=200, toward_center=share)
        pd.testing.assert_frame_equal(landed, pd.read_csv(io.StringIO(expected.to_csv(index=False))))
