"""``snapshot`` and ``validate_data``: the first two tasks of ``ct_<model>``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow.operators.base import MlopsBaseOperator, storage_path, trigger_data_uri

if TYPE_CHECKING:
    from airflow.sdk import Context


def describe_trigger(context: Context) -> dict[str, str]:
    """What started this DAG run: schedule, manual, or an asset event (with its metadata)."""
    dag_run = context["dag_run"]
    run_type = str(getattr(dag_run, "run_type", "") or "unknown")
    info = {"mlops.trigger": run_type.split(".")[-1].lower()}
    events = context.get("triggering_asset_events") or {}
    reasons = []
    for asset_events in events.values():
        for event in asset_events:
            extra = getattr(event, "extra", None) or {}
            if extra.get("reason"):
                reasons.append(str(extra["reason"]))
            if extra.get("trigger"):
                info["mlops.trigger"] = str(extra["trigger"])
            if extra.get("drift_report_run_id"):
                info["mlops.trigger.drift_run_id"] = str(extra["drift_report_run_id"])
    manual_reason = str((context.get("params") or {}).get("reason") or "").strip()
    if manual_reason:
        reasons.append(manual_reason)
    if reasons:
        info["mlops.trigger.reason"] = "; ".join(reasons)[:4000]
    return info


def airflow_run_url(dag_id: str, run_id: str) -> str:
    """The DAG run's page in the Airflow UI (``[api] base_url``, else the embedded default's address)."""
    from urllib.parse import quote

    from airflow.sdk import conf

    base = (conf.get("api", "base_url", fallback="") or "http://127.0.0.1:8080").rstrip("/")
    return f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


class SnapshotOperator(MlopsBaseOperator):
    """Write the run's immutable snapshot (its batches in the model's batch store) and open the DAG run's
    MLflow run.

    :param data_uri: landing zone to read instead of the spec's ``source.uri`` (templated; empty = spec).
    """

    template_fields: Sequence[str] = ("model_name", "data_uri")

    def __init__(self, *, data_uri: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_uri = data_uri
        self.written_snapshot: Any = None  # for OpenLineage, after execute

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the landed batches read -> the snapshot, with its content hash."""
        from mlops_airflow.operators.lineage import snapshot_lineage

        return snapshot_lineage(self.written_snapshot)

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_airflow.core import settings, tracking
        from mlops_airflow.core.batch_store import SNAPSHOTS, STORE
        from mlops_airflow.core.data import DataError, safe_name, snapshot_key, write_snapshot

        spec = self.spec
        # The spec's own source.uri is reviewed like code; only a trigger's data_uri is confined.
        trigger = trigger_data_uri(self.data_uri)
        source = trigger or settings.resolve_source_uri(spec.source.uri)
        model_root = self.storage_root() / spec.name
        snapshots = model_root / SNAPSHOTS
        dest = snapshots / snapshot_key(context["run_id"])
        try:
            # Each batch is stored once in the model's batch store; the snapshot is a manifest naming them.
            snapshot = write_snapshot(
                spec,
                storage_path(source),
                dest,
                within=snapshots,
                run_id=context["run_id"],
                store=model_root / STORE,
                confined=trigger is not None,  # checked again as it is listed and read, not only by its name
            )
        except DataError as err:  # no data to train on is a data failure: fail closed, no retry
            raise AirflowFailException(str(err)) from None
        self.log.info("snapshot %s: %s", snapshot.uri, snapshot.summary())
        for skipped in snapshot.skipped:
            self.log.warning("batch not whole yet, left out of the snapshot: %s", skipped)
        self.written_snapshot = snapshot

        run_id = tracking.get_or_create_run(
            self.client,
            self.experiment_id,
            {
                tracking.TAG_DAG_ID: self.dag_id,
                tracking.TAG_RUN_ID: context["run_id"],
                tracking.TAG_KIND: "ct",
            },
            {
                "airflow.try_number": str(context["ti"].try_number),
                "mlops.git_commit": settings.git_commit(),
                "mlops.model": spec.name,
                **describe_trigger(context),
                **tracking.source_tags(airflow_run_url(self.dag_id, context["run_id"])),
            },
            run_name=f"ct-{safe_name(context['run_id'])}",
        )
        self.link_run(run_id)
        self.client.set_tag(run_id, "mlops.data_hash", snapshot.content_hash)
        tracking.log_params(
            self.client,
            run_id,
            {"snapshot_uri": snapshot.uri, "data_hash": snapshot.content_hash, "source_uri": source},
        )
        tracking.log_json(self.client, run_id, snapshot.to_dict(), "data/snapshot_manifest.json")
        return {**snapshot.summary(), "mlflow_run_id": run_id}


class ValidateDataOperator(MlopsBaseOperator):
    """Validate the snapshot with Great Expectations; fail closed naming how many of the files checked broke a
    rule and, for each broken rule, the file, the column, the rule in words, the count and the most common
    offending values (the same text in the task log, the failure, ``validation/summary.json`` and the
    ``validation_failed`` notification).

    :param snapshot: the ``snapshot`` task's XCom (templated, usually ``snapshot.output``).
    """

    template_fields: Sequence[str] = ("model_name", "snapshot")
    ui_color = "#fdebd0"

    def __init__(self, *, snapshot: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.snapshot = snapshot

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_airflow.core import tracking
        from mlops_airflow.core.data import read_manifest
        from mlops_airflow.core.validation import validate_snapshot

        snapshot = read_manifest(storage_path(self.snapshot["snapshot_uri"]))
        if snapshot is None:
            raise AirflowFailException(f"{self.snapshot['snapshot_uri']}: snapshot manifest is missing")
        # Landed files are immutable: a file's passing verdict is reused by its hash (and the suite's).
        summary = validate_snapshot(self.spec, snapshot, cache=self.storage_root() / self.spec.name / "validation")
        run_id = self.parent_run_id(context)
        tracking.log_json(self.client, run_id, summary.to_dict(limit=None), "validation/summary.json")  # every one
        self.client.set_tag(run_id, "mlops.validation", "passed" if summary.success else "failed")
        self.client.log_metric(run_id, "validation_failed_expectations", len(summary.failed))
        self.client.log_metric(run_id, "unlabelled_rows", summary.unlabelled_rows)  # not trained or evaluated on
        result = summary.to_dict()
        context["ti"].xcom_push(key="validation_summary", value=result)
        if not summary.success:
            self.client.set_terminated(run_id, "FAILED")
            # Bad data does not get better on retry: fail without retrying.
            raise AirflowFailException(summary.message())
        return result
