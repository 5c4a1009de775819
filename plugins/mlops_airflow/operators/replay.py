"""``replay_<model>``: replay retrain policies over the model's landed history and log the report to MLflow.

The logic is :mod:`mlops_airflow.core.replay`; this operator reads the params, runs it in a temporary folder and
logs the report to the experiment ``<model>/replay``. It never touches the model's experiment, registry,
aliases, storage prefix or landing zone (only read).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mlops_airflow.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class ReplayOperator(MlopsBaseOperator):
    """Replay ``policies`` (comma-separated names) over the batches dated ``start`` to ``end``.

    :param label_delay_days: days until a batch's labels reach CT; empty: the spec's ``label.delay_days``.
    """

    template_fields: Sequence[str] = ("model_name", "start", "end", "policies", "label_delay_days")
    ui_color = "#e8daef"

    def __init__(
        self, *, start: str, end: str, policies: str, label_delay_days: str | int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.start = start
        self.end = end
        self.policies = policies
        self.label_delay_days = label_delay_days

    def execute(self, context: Context) -> dict[str, Any]:
        import tempfile
        from pathlib import Path

        from airflow.sdk.exceptions import AirflowFailException

        from mlops_airflow.core import tracking
        from mlops_airflow.core.replay import ReplayError, log_report, run_and_report

        names = [n.strip() for n in str(self.policies).replace("[", "").replace("]", "").split(",")]
        names = [n.strip("'\" ") for n in names if n.strip("'\" ")]
        delay = None if self.label_delay_days in (None, "", "None") else int(str(self.label_delay_days))
        with tempfile.TemporaryDirectory(prefix=f"replay-{self.model_name}-") as tmp:
            try:
                result, paths = run_and_report(
                    self.spec, self.start, self.end, names, Path(tmp), label_delay_days=delay
                )
            except ReplayError as err:
                raise AirflowFailException(str(err)) from None
            tags = {tracking.TAG_DAG_ID: self.dag_id, tracking.TAG_RUN_ID: context["run_id"], "mlops.kind": "replay"}
            run_id = log_report(self.client, result, paths, tags)
            self.log.info("%s", paths["md"].read_text(encoding="utf-8").split("## Policies")[0])
        self.log.info("replay of %s logged to experiment %s/replay, run %s", self.model_name, self.model_name, run_id)
        return {
            "mlflow_run_id": run_id,
            "policies": {
                n: {"mean": p["mean"], "worst": p["worst"], "ct_runs": p["ct_runs"]}
                for n, p in result["policies"].items()
            },
            "replay_seconds": result["replay_seconds"],
        }
