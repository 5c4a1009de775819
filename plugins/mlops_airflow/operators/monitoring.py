"""``predict_<model>`` (batch scoring with the champion) and ``monitor_<model>`` (drift, live metric,
retrain request)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from mlops_airflow.core.monitoring import MonitorError
from mlops_airflow.operators.base import MlopsBaseOperator, storage_path, trigger_data_uri

if TYPE_CHECKING:
    from airflow.sdk import Context

LAST_REQUEST_TAG = "mlops.last_retrain_request_at"


def _batches(spec: Any, uri: str, fmt: str, what: str = "landing zone", *, confined: bool = False) -> Any:
    """The batch files under ``uri``, read through the landing zone's checks; a zone that does not exist or a
    file that cannot be used fails the task at once, without retries, naming what to fix. ``confined``: the
    zone came from a trigger, so it and every file must resolve inside the allowed roots when read too."""
    from mlops_airflow.operators.base import LandedBatches

    return LandedBatches(spec, uri, fmt, what, confined=confined)


SOURCE_KEY = b"mlops.source"


def _scored_source(target: Any) -> dict[str, Any] | None:
    """The batch a prediction file records it scored (``{}`` for a file written before they recorded it), or
    ``None`` when there is no prediction file at ``target``."""
    import json

    import pyarrow.parquet as pq

    if not target.exists():
        return None
    with target.open("rb") as fh:
        meta = pq.read_schema(fh).metadata or {}
    try:
        found = json.loads(meta.get(SOURCE_KEY, b"{}"))
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _same_listing(recorded: dict[str, Any], batch: Any) -> bool:
    """Whether ``batch`` is, by its listing, the file a prediction file recorded: same path, size and mtime
    (a cheap check before reading; any difference is settled by the SHA-256 of the bytes)."""
    if not recorded:
        return False
    return (recorded.get("path"), recorded.get("size"), recorded.get("mtime")) == (
        str(batch.path),
        batch.size,
        batch.mtime,
    )


def _write_predictions(out: Any, fh: Any, batch: Any, sha: str) -> None:
    """``out`` as Parquet, with the batch it came from in the file's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlops_airflow.core.encoding import dumps

    table = pa.Table.from_pandas(out, preserve_index=False)
    source = {"path": str(batch.path), "size": batch.size, "mtime": batch.mtime, "sha256": sha}
    meta = {**(table.schema.metadata or {}), SOURCE_KEY: dumps(source).encode()}
    pq.write_table(table.replace_schema_metadata(meta), fh)


class PredictOperator(MlopsBaseOperator):
    """Score every not-yet-scored batch with ``models:/<model>@champion``.

    Each input batch gives one Parquet file of predictions (input columns, ``prediction``,
    ``out_of_domain``, ``model_version``, ``predicted_at``), named after the batch and recording in its
    metadata the batch it scored (path, size, mtime, SHA-256 of its bytes). Every row is scored, none is
    dropped or refused, whatever ``serving.out_of_domain`` says: a row outside the spec's domain (a category
    not in ``categories``, a number outside ``min``/``max``; :mod:`mlops_airflow.core.domain`, the rule the
    model server applies) carries in ``out_of_domain`` what the server's flag says of it
    (``region: 'atlantis' not in categories [north, south, east, west]``, several joined by ``"; "``), null
    for a row inside it; a missing value is not outside (nullability is validation's rule). The count of such
    rows is logged per batch and returned as ``out_of_domain_rows`` (all batches written by the run).

    A batch that already has a prediction file is skipped, so reruns score nothing twice; a *different* file
    of the same name (from another folder passed as ``data_uri``, or a batch landed again with other bytes) is
    scored to ``<name>.<sha256[:12]>.parquet`` beside it, never skipped. The predictions asset is emitted when
    anything new was written.

    :param data_uri: a batch file or a directory of them (templated; empty = the spec's scoring zone).
    """

    template_fields: Sequence[str] = ("model_name", "data_uri")
    ui_color = "#d1f2eb"

    def __init__(self, *, data_uri: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_uri = data_uri
        self.lineage_io: tuple[str, str | None, list[str], list[str]] = ("", None, [], [])  # for OpenLineage

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the champion version and the batches it scored -> the prediction files."""
        from mlops_airflow.operators.lineage import prediction_lineage

        tracking_uri, version, batches, written = self.lineage_io
        return prediction_lineage(tracking_uri, self.model_name, version, batches, written)

    def execute(self, context: Context) -> dict[str, Any]:

        import pandas as pd

        from mlops_airflow.core import settings, tracking
        from mlops_airflow.core.domain import frame_marks
        from mlops_airflow.core.scoring import load_model, predict_rows

        spec = self.spec
        trigger = trigger_data_uri(self.data_uri)
        uri = trigger or settings.resolve_source_uri(spec.scoring_uri)
        champion = self.servable()  # proven blessed, or the task fails naming the version and the rule
        version = champion.version
        self.mlflow_url = tracking.model_url(spec.name, version)
        out_dir = self.storage_root() / spec.name / "predictions"
        out_dir.mkdir(parents=True, exist_ok=True)
        model = None
        written, skipped, scored = [], [], []
        out_of_domain = 0
        landed = _batches(spec, uri, spec.scoring.format, "scoring zone", confined=trigger is not None)
        batches = landed.files
        if not batches:
            self.log.info("scoring zone %s holds no batch: nothing to score", uri)
        for batch in batches:
            stem = batch.name.rsplit(".", 1)[0]
            target = out_dir / f"{stem}.parquet"
            recorded = _scored_source(target)
            if recorded is not None and _same_listing(recorded, batch):
                skipped.append(batch.name)
                continue
            read = landed.table(batch)
            if read is None:  # not whole yet (warned): a later run scores it
                continue
            frame, sha = read
            if recorded is not None and recorded.get("sha256") in {sha, None}:  # same bytes (None: made before
                skipped.append(batch.name)  # predictions recorded their batch)
                continue
            if recorded is not None:  # another file of this name was scored: both keep their predictions
                target = out_dir / f"{stem}.{sha[:12]}.parquet"
                if (_scored_source(target) or {}).get("sha256") == sha:
                    skipped.append(batch.name)
                    continue
            missing = [c for c in spec.model_features if c not in frame.columns]
            if missing:
                raise AirflowFailException(f"{batch}: scoring batch lacks feature column(s) {missing}")
            if model is None:
                model = load_model(champion.uri)
            answer, _ = predict_rows(spec, model, frame)
            if not isinstance(answer, pd.DataFrame):  # a model logged before answers were frames
                answer = pd.DataFrame({"prediction": list(answer)}, index=frame.index)
            marks = pd.Series(frame_marks(spec, frame), index=frame.index, dtype="object")
            # The answer a client of the served model gets: the label and one probability per class.
            out = pd.concat(
                [frame.drop(columns=list(answer.columns), errors="ignore"), answer.set_index(frame.index)], axis=1
            ).assign(out_of_domain=marks, model_version=version, predicted_at=dt.datetime.now(dt.UTC))
            outside = int(marks.notna().sum())
            out_of_domain += outside
            self.log.info("%s: %d of %d row(s) outside the spec's domain (scored, marked in out_of_domain)",
                          batch.name, outside, len(out))  # fmt: skip
            tmp = out_dir / f".{target.name}.{uuid.uuid4().hex}.tmp"  # no name planted ahead can be followed
            with tmp.open("wb") as fh:
                _write_predictions(out, fh, batch, sha)
            tmp.rename(target)  # readers never see a half-written prediction file
            written.append(str(target))
            scored.append(str(batch))
        self.lineage_io = (self.hook.tracking_uri, version, scored, written)
        self.log.info("scored %d batch(es) with %s v%s; %d already scored", len(written), spec.name, version,
                      len(skipped))  # fmt: skip
        if written:
            events = context["outlet_events"]
            for outlet in self.outlets:
                events[outlet].extra = {"model_version": version, "files": [w.rsplit("/", 1)[-1] for w in written]}
        return {"model_version": version, "written": len(written), "skipped": len(skipped), "files": written[:20],
                "out_of_domain_rows": out_of_domain}  # fmt: skip


class MonitorOperator(MlopsBaseOperator):
    """Drift of recent production data against the champion's training snapshot, its live metric, and a
    label-free estimate of its primary metric on each recent batch.

    Logs a drift report (JSON, Markdown, one plot per drifted feature) as an MLflow run and returns the
    retrain decision; ``request_retrain`` acts on it. The decisions themselves are
    :mod:`mlops_airflow.core.monitoring`'s; the estimate (classifiers; calibrated on the champion's evaluation
    rows, :mod:`mlops_airflow.core.estimate`) is logged per batch as step ``i`` of ``estimated_<metric>``,
    beside ``realised_<metric>`` and ``estimate_error_<metric>`` once the batch's labels have arrived, with
    every batch's reason in ``estimate/batches.json``. The estimates are made before the decision: the newest
    landed batch's estimate against the champion's metric at promotion is the estimated drop that the spec's
    ``retrain.max_estimated_drop`` reads, logged as ``estimated_drop_<metric>`` (tag
    ``mlops.estimated_drop_reason``) and pushed as ``estimated_drop``. A fault in the data (labels outside the
    classes, an unreadable tag) fails the task without retries.

    :param data_uri: landing zone to read recent batches from (templated; empty = the spec's source).
    """

    template_fields: Sequence[str] = ("model_name", "data_uri")
    ui_color = "#fdebd0"

    def __init__(self, *, data_uri: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_uri = data_uri
        self.out_of_domain = 0  # served rows flagged out of domain (request log)

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            return self._monitor(context)
        except MonitorError as err:  # a fault in the data or the registry: a retry does not fix it
            raise AirflowFailException(str(err)) from None

    def _monitor(self, context: Context) -> dict[str, Any]:

        import numpy as np
        import pandas as pd

        from mlops_airflow.core import monitoring, settings, tracking
        from mlops_airflow.core.data import DataError, load_part, read_manifest
        from mlops_airflow.core.drift import compute_drift, plot_feature_drift, plot_file_name
        from mlops_airflow.core.evaluation import Target
        from mlops_airflow.core.reports import label_distribution_figure
        from mlops_airflow.core.scoring import load_model, model_threshold, output_scores, predict_rows

        spec = self.spec
        trigger = trigger_data_uri(self.data_uri)
        uri = trigger or settings.resolve_source_uri(spec.source.uri)
        champion = self.servable()  # proven blessed, or the task fails naming the version and the rule
        tags = champion.tags
        snapshot_uri = tags.get("mlops.snapshot_uri")
        reference_snapshot = read_manifest(storage_path(snapshot_uri)) if snapshot_uri else None
        if reference_snapshot is None:
            raise AirflowFailException(
                f"{spec.name} v{champion.version}: its training snapshot {snapshot_uri!r} is gone; no reference"
            )
        reference = load_part(reference_snapshot, "train")
        landed = _batches(spec, uri, spec.source.format, confined=trigger is not None)
        recent, current = landed.newest(spec.drift.window_batches)

        report = compute_drift(reference, current, spec.numeric_features, spec.drift_categories, spec.drift)
        # What production actually scored (the model server's request log), beside the landing zone.
        serving_report, serving_dates, served = self._serving_drift(reference)

        champion_run = self.client.get_run(champion.run_id) if champion.run_id else None
        reference_metric = champion_run.data.metrics.get(f"candidate_{spec.primary}") if champion_run else None
        model = load_model(champion.uri)
        threshold = model_threshold(model)
        answer, scores = predict_rows(spec, model, current)
        label = spec.label.name
        labels = current.get(label, None)
        live = monitoring.live_metric(spec, labels, scores, threshold, reference_metric)

        # Label-free estimate of each recent batch, calibrated on the rows the gate scored the champion on.
        try:
            evaluation = load_part(reference_snapshot, "eval", spec.input_columns)
            _, eval_scores = predict_rows(spec, model, evaluation)
            calibration = monitoring.champion_calibration(spec, evaluation[label], eval_scores)
        except DataError as err:
            calibration = monitoring.unusable_calibration(spec, f"its evaluation rows cannot be read: {err}")
        bounds = np.cumsum([0, *landed.newest_rows])
        parts: list[tuple[str, str, Any, Any]] = [
            (monitoring.LANDING, b.name, scores[lo:hi], None if labels is None else labels.iloc[lo:hi])
            for b, lo, hi in zip(recent, bounds[:-1], bounds[1:], strict=True)
        ]
        if served is not None and spec.is_classifier:
            mine = served[served["model_version"].astype(str) == str(champion.version)]
            for date, rows in mine.groupby(mine["served_at"].astype(str).str[:10], sort=True):
                try:
                    parts.append((monitoring.SERVING, f"date={date}", output_scores(rows, spec), None))
                except ValueError as err:  # a log written before answers carried probabilities
                    self.log.warning("request log of %s on %s: no estimate: %s", spec.name, date, err)
        estimates = monitoring.estimate_batches(spec, calibration, parts, threshold)

        registered = self.client.get_registered_model(spec.name)
        last = monitoring.parse_request_time((registered.tags or {}).get(LAST_REQUEST_TAG), spec.name, LAST_REQUEST_TAG)
        now = dt.datetime.now(dt.UTC)
        ct_runs = self._recent_ct_runs(spec.name, now) if "retrain" in spec.model_fields_set else None
        decision = monitoring.decide(spec, report, serving_report, live, last, now, ct_runs, estimates)
        estimated = decision.estimated

        run_id = tracking.get_or_create_run(
            self.client,
            self.experiment_id,
            {tracking.TAG_DAG_ID: self.dag_id, tracking.TAG_RUN_ID: context["run_id"], tracking.TAG_KIND: "monitor"},
            {"mlops.champion_version": str(champion.version)},
            run_name=f"monitor-{now:%Y-%m-%dT%H%M}",
        )
        self.link_run(run_id)
        tracking.log_json(self.client, run_id, report.to_dict(), "drift/report.json")
        tracking.log_text(self.client, run_id, report.to_markdown(), "drift/report.md")
        if serving_report is not None:
            tracking.log_json(self.client, run_id, serving_report.to_dict(), "drift/serving_report.json")
            tracking.log_text(self.client, run_id, serving_report.to_markdown(), "drift/serving_report.md")
        kinds = {f.name: f.kind for f in report.features}
        figures = {
            plot_file_name(name): plot_feature_drift(reference, current, name, kinds[name])
            for name in report.drifted_features
        }
        if spec.is_classifier and isinstance(answer, pd.DataFrame):
            # What the champion predicts now, and the labels that arrived, against the training labels.
            target = Target.of(spec)
            reference_labels = reference[label].to_numpy(dtype=object)
            figures["labels_predicted.png"] = label_distribution_figure(
                target, reference_labels, answer["prediction"].to_numpy(dtype=object), "Predicted label vs training"
            )
            if live.rows:
                labelled = current.loc[current[label].notna(), label]
                figures["labels_observed.png"] = label_distribution_figure(
                    target, reference_labels, labelled.to_numpy(dtype=object), "Label vs training"
                )
        tracking.log_figures(self.client, run_id, figures, "drift/plots")
        metrics = {"drift_share": report.drift_share, "drifted_features": float(len(report.drifted_features))}
        if serving_report is not None:
            metrics["serving_drift_share"] = serving_report.drift_share
            metrics["serving_out_of_domain_rows"] = float(self.out_of_domain)
        if live.value is not None:
            metrics[f"live_{spec.primary}"] = live.value
        if estimated.drop is not None:
            metrics[f"estimated_drop_{spec.primary}"] = estimated.drop
        tracking.log_metrics(self.client, run_id, metrics)
        self._log_estimates(run_id, calibration, estimates)
        self.client.set_tag(run_id, "mlops.retrain_requested", str(decision.request).lower())
        self.client.set_tag(run_id, "mlops.retrain_reason", decision.reason[:5000])
        self.client.set_tag(run_id, "mlops.estimated_drop_reason", estimated.reason[:5000])
        self.client.set_terminated(run_id, "FINISHED")
        for line in [*decision.log_lines(), *(e.log_line() for e in estimates)]:
            self.log.info("%s: %s", spec.name, line)
        newest = next((e for e in reversed(estimates) if e.source == monitoring.LANDING), None)
        return {
            "request": decision.request,
            "reason": decision.reason,
            "in_cooldown": decision.in_cooldown,
            "drift_share": report.drift_share,
            "drifted_features": report.drifted_features,
            "live_metric": live.value,
            "estimated_drop": estimated.drop,
            "champion_version": str(champion.version),
            "batches": [b.name for b in recent],
            "mlflow_run_id": run_id,
            "drift_source": decision.drift.source,
            "serving_drift_share": serving_report.drift_share if serving_report is not None else None,
            "serving_out_of_domain_rows": self.out_of_domain if serving_report is not None else None,
            "serving_drifted_features": serving_report.drifted_features if serving_report is not None else None,
            "serving_dates": serving_dates,
            "estimate": newest.to_dict() if newest is not None else None,
        }

    def _log_estimates(self, run_id: str, calibration: Any, estimates: list[Any]) -> None:
        """Each batch's estimate as step ``i`` of ``estimated_<metric>`` (with its interval, and the realised
        metric and the error once labels arrived), the list with reasons as ``estimate/batches.json``."""
        import time

        from mlflow.entities import Metric

        from mlops_airflow.core import tracking

        metric = self.spec.primary
        now = int(time.time() * 1000)
        batch = []
        for step, found in enumerate(estimates):
            e = found.estimate
            values = {"estimated": e.value, "estimated_low": e.low, "estimated_high": e.high,
                      "realised": e.realised, "estimate_error": e.error}  # fmt: skip
            batch += [Metric(f"{k}_{metric}", float(v), now, step) for k, v in values.items() if v is not None]
        if batch:
            self.client.log_batch(run_id, metrics=batch)
        tracking.log_json(
            self.client,
            run_id,
            {"calibration": calibration.summary(), "batches": [e.to_dict() for e in estimates]},
            "estimate/batches.json",
        )
        reason = estimates[-1].estimate.reason if estimates else calibration.reason
        self.client.set_tag(run_id, "mlops.estimate_reason", reason[:5000])

    def _recent_ct_runs(self, model: str, now: dt.datetime) -> list[dt.datetime]:
        """Start times of the model's CT runs of the last 7 days (the retrain policy's interval and weekly cap)."""
        from mlops_airflow.core.tracking import TAG_KIND

        found = self.client.get_experiment_by_name(model)
        if found is None:
            return []
        since = int((now - dt.timedelta(days=7)).timestamp() * 1000)
        runs = self.client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`{TAG_KIND}` = 'ct' and attributes.start_time >= {since}",
            max_results=500,
        )
        return [dt.datetime.fromtimestamp(r.info.start_time / 1000, dt.UTC) for r in runs]

    def _serving_drift(self, reference: Any) -> tuple[Any, list[str], Any]:
        """Drift of the rows the model server answered with ``champion`` in the newest ``drift.window_batches``
        days of its request log (``<storage>/<model>/serving/date=...``), with those rows; ``(None, [], None)``
        without a log."""
        from mlops_airflow.core.drift import compute_drift
        from mlops_airflow.core.request_log import log_dates, out_of_domain_rows, read_log, served_rows

        spec = self.spec
        base = self.storage_root()
        dates = log_dates(base, spec.name)[-spec.drift.window_batches :]
        served = served_rows(spec, read_log(base, spec.name, dates)) if dates else None
        if served is None or served.empty:
            return None, [], None
        # Rows the server answered although they were outside the spec's domain (serving.out_of_domain: flag)
        self.out_of_domain = out_of_domain_rows(served)
        self.log.info("request log of %s: %d served rows on %s, %d of them out of domain", spec.name, len(served),
                      ", ".join(dates), self.out_of_domain)  # fmt: skip
        report = compute_drift(reference, served, spec.numeric_features, spec.drift_categories, spec.drift)
        return report, dates, served


class RequestRetrainOperator(MlopsBaseOperator):
    """Emit ``mlops://<model>/retrain-request`` (its outlet) when the monitor asked for it; else skip.

    A skipped task emits no asset event, so ``ct_<model>`` only runs for a real request. The request time
    is kept on the registered model, which is what the cooldown reads.

    :param decision: the ``monitor`` task's XCom.
    """

    template_fields: Sequence[str] = ("model_name", "decision")
    ui_color = "#f9e79f"

    def __init__(self, *, decision: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.decision = decision

    def execute(self, context: Context) -> dict[str, Any]:

        if not self.decision.get("request"):
            raise AirflowSkipException(f"no retrain requested: {self.decision.get('reason')}")
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        extra = {
            "trigger": "drift",
            "reason": self.decision["reason"],
            "drift_report_run_id": self.decision.get("mlflow_run_id"),
            "requested_at": now,
            "champion_version": self.decision.get("champion_version"),
        }
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = extra
        self.client.set_registered_model_tag(self.model_name, LAST_REQUEST_TAG, now)
        self.log.info("retrain of %s requested: %s", self.model_name, extra["reason"])
        return extra
