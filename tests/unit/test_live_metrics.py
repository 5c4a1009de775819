"""Live metrics from the request log and labels that arrive later (core/request_log.py): plain frames, no server."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from mlops_airflow.core import request_log
from mlops_airflow.core.config import get_spec

SPEC = get_spec("credit_default")
SERVED = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def logged(request_id: str, role: str, version: str, proba_1: float, row: int = 0) -> dict[str, object]:
    """One request-log row as the server writes it (inputs left out: live metrics read the answer)."""
    return {
        "request_id": request_id, "row": row, "served_at": SERVED, "model_version": version, "role": role,
        "threshold": 0.5, "prediction": int(proba_1 >= 0.5), "proba_0": 1 - proba_1, "proba_1": proba_1,
    }  # fmt: skip


def test_a_request_id_sent_twice_is_left_out_of_live_metrics_and_counted() -> None:
    """A client that reuses its X-Request-Id (a retry, a constant header) makes one label match two answers:
    which answer it belongs to is unknown, so neither is scored, and the count says so."""
    champion, challenger = request_log.CHAMPION_ROLE, request_log.CHALLENGER_ROLE
    rows = [logged(f"r{i}", champion, "3", p) for i, p in enumerate((0.9, 0.8, 0.2, 0.1))]
    rows += [logged(f"r{i}", challenger, "4", p) for i, p in enumerate((0.7, 0.6, 0.3, 0.4))]
    rows += [logged("retry", champion, "3", 0.95), logged("retry", champion, "3", 0.05)]  # the same id, twice
    rows += [logged("retry", challenger, "4", 0.9)]
    labels = pd.DataFrame({"request_id": ["r0", "r1", "r2", "r3", "retry"], "default": [1, 1, 0, 0, 1]})

    live = request_log.live_metrics(SPEC, pd.DataFrame(rows), labels)

    assert live["labelled"] == 4 and live["ambiguous"] == 1
    by_role = {entry["role"]: entry for entry in live["by_version"]}
    assert by_role["champion"]["rows"] == 4 and by_role["champion"]["metrics"]["roc_auc"] == pytest.approx(1.0)
    assert by_role["challenger"]["rows"] == 4
    assert live["agreement"] == pytest.approx(1.0)


def test_a_request_id_answered_once_per_role_is_not_ambiguous() -> None:
    """A champion answer and its shadow challenger's share the request id: that is one request, not two."""
    rows = [logged("a", request_log.CHAMPION_ROLE, "3", 0.9), logged("a", request_log.CHALLENGER_ROLE, "4", 0.2)]
    rows += [logged("b", request_log.CHAMPION_ROLE, "3", 0.1), logged("b", request_log.CHALLENGER_ROLE, "4", 0.8)]
    labels = pd.DataFrame({"request_id": ["a", "b"], "default": [1, 0]})
    live = request_log.live_metrics(SPEC, pd.DataFrame(rows), labels)
    assert live["labelled"] == 2 and live["ambiguous"] == 0 and live["agreement"] == pytest.approx(0.0)
