"""``snapshot`` and ``validate_data``: the first two tasks of ``ct_<model>``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


def storage_path(uri: str) -> Any:
    """An ``ObjectStoragePath`` for a landing-zone or storage URI (local paths become ``file://``)."""
    from pathlib import Path

    from airflow.sdk import ObjectStoragePath

    from mlops_airflow.core import settings

    if "://" not in uri:
        return ObjectStoragePath(Path(uri).resolve().as_uri())
    if uri.startswith("file://"):
        return ObjectStoragePath(uri)
    return ObjectStoragePath(uri, conn_id=settings.storage_conn_id())


def trigger_data_uri(value: str | None, param: str = "data_uri") -> str | None:
    """A trigger's ``data_uri`` confined to the landing roots (normalised), or ``None`` when it is empty.

    Trigger params are untrusted input (docs/design.md 7): a location outside ``MLOPS_DATA_ROOT`` and
    ``MLOPS_ALLOWED_DATA_ROOTS`` fails the task before anything is listed or read, without retry.
    """
    from mlops_airflow.core import settings

    text = (value or "").strip()
    if text in {"", "None"}:
        return None
    try:
        return settings.confine_data_uri(text, param=param)
    except settings.DataRootError as err:
        raise AirflowFailException(str(err)) from None


class LandedBatches:
    """A landing or scoring zone as a task reads it: through :mod:`mlops_airflow.core.landing` (listed,
    confined, checked whole and under the size cap). A data fault fails the task without retries, naming the
    file and the rule: a retry does not make bad data good.

    :param spec: the model spec (its landing protocol and size cap apply).
    :param uri: the zone (a path or URI).
    :param fmt: the format of its batch files.
    :param what: what the zone is called in messages.
    """

    def __init__(self, spec: Any, uri: str, fmt: str, what: str = "landing zone") -> None:
        from mlops_airflow.core.landing import DataError, LandingZone, MissingZone

        self.zone = LandingZone.of(spec, storage_path(uri), fmt)
        try:
            #: The zone's batch files, oldest first.
            self.files = self.zone.files()
        except MissingZone:  # a retry does not make a folder appear
            raise AirflowFailException(
                f"{what} {uri} does not exist: land {fmt} batch files there (or pass param data_uri)"
            ) from None
        except DataError as err:
            raise AirflowFailException(str(err)) from None

    def frame(self, batch: Any) -> Any:
        """One batch as a pandas frame; ``None`` when it is not whole yet and the spec says ``skip``."""
        from mlops_airflow.core.landing import DataError

        try:
            read = self.zone.usable(batch)
        except DataError as err:
            raise AirflowFailException(str(err)) from None
        return None if read is None else read[0].to_pandas()

    def newest(self, count: int) -> tuple[list[Any], Any]:
        """The ``count`` newest whole batches (oldest first) and their rows as one pandas frame."""
        import pandas as pd

        from mlops_airflow.core.landing import DataError

        batches, frames = [], []
        try:
            for batch, read in self.zone.newest(count, self.files):
                if isinstance(read, DataError):
                    raise read
                batches.append(batch)
                frames.append(read[0].to_pandas())
                del read
            if not frames:
                raise self.zone.shortage(0, 1)
        except DataError as err:
            raise AirflowFailException(str(err)) from None
        return batches[::-1], pd.concat(frames[::-1], ignore_index=True)


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
    """Write the run's immutable Parquet snapshot and open the DAG run's MLflow run.

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
        from mlops_airflow.core.data import DataError, safe_name, snapshot_key, write_snapshot

        spec = self.spec
        # The spec's own source.uri is reviewed like code; only a trigger's data_uri is confined.
        source = trigger_data_uri(self.data_uri) or settings.resolve_source_uri(spec.source.uri)
        snapshots = self.storage_root() / spec.name / "snapshots"
        dest = snapshots / snapshot_key(context["run_id"])
        try:
            snapshot = write_snapshot(spec, storage_path(source), dest, within=snapshots, run_id=context["run_id"])
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
    """Validate the snapshot with Great Expectations; fail closed with file, column, rule and counts.

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
        tracking.log_json(self.client, run_id, summary.to_dict(), "validation/summary.json")
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
