"""Constants and row makers shared by the model server tests and their fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlops_airflow.core import demo_data

REPO = Path(__file__).resolve().parents[2]
MODEL = "credit_default"
TOKEN = "test-serving-token-0123456789"
FEATURES = ["age", "income", "debt_ratio", "credit_lines", "late_payments", "utilization", "employment_type",
            "region", "home_ownership"]  # fmt: skip


def rows(n: int, day: int = 20, shift: float = 0.0) -> list[dict[str, Any]]:
    frame = demo_data.generate_batch(day, n_rows=n, seed=day, feature_shift=shift)[FEATURES]
    return [{k: (None if v != v else v) for k, v in r.items()} for r in frame.to_dict(orient="records")]
