"""The demo generator spreads a shift over days: a step, a gradual ramp, a seasonal wave."""

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
