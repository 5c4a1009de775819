"""Model spec -> the model's DAGs (docs/design.md 3). Runs at parse time: reads YAML, builds tasks, nothing else."""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, BaseOperator, Param
from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable

from mlops_airflow.core.config import candidate_grid, load_specs_tolerant, use_models_dir
from mlops_airflow.core.spec import MAX_LABEL_DELAY_DAYS, ModelSpec, ModelSpecError

START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)  # only the invalid-spec stand-in DAG (never scheduled)
REGISTRY_POOL = "mlflow_registry"


def default_args(spec: ModelSpec) -> dict[str, Any]:
    """Retries with exponential backoff for what talks to servers; data and gate failures fail closed."""
    return {
        "owner": spec.owner,
        "retries": 2,
        "retry_delay": dt.timedelta(seconds=20),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=10),
    }


def model_dag(spec: ModelSpec, dag_id: str, kind: str, **kwargs: Any) -> DAG:
    """A DAG of the model: settings every one shares (no backfill, one run at a time, retries, tags).

    No ``start_date``: with one, a paused DAG's next run is its latest *past* cron slot, which starts the
    moment a person unpauses it, e.g. with "unpause on trigger" in the trigger form, so one click gave two
    runs. Without it, :func:`cron_timetable` decides: the first run is the next slot in the future.
    """
    return DAG(
        dag_id=dag_id,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(spec),
        tags=["mlops", kind, spec.name, *spec.tags],
        **kwargs,
    )


def data_uri_param(description: str) -> Param:
    """A trigger's ``data_uri``: refused by the trigger form itself when it is longer than any path or holds a
    control character; the task then confines it to the landing roots
    (:func:`mlops_airflow.core.settings.confine_data_uri`)."""
    from mlops_airflow.core.settings import PATH_MAX_BYTES

    # No control character (JSON Schema's ``not``, which Python cannot pass as a keyword).
    control_free: dict[str, Any] = {"not": {"type": "string", "pattern": "[\\x00-\\x1f\\x7f-\\x9f]"}}
    return Param(
        None,
        type=["null", "string"],
        maxLength=PATH_MAX_BYTES,
        description=description,
        **control_free,
    )


def retrain_asset(spec: ModelSpec) -> Asset:
    return Asset(uri=spec.retrain_asset_uri, name=f"{spec.name}_retrain_request")


def cron_timetable(cron: str) -> CronTriggerTimetable:
    """``cron`` in UTC; a DAG with no run yet first runs at the next slot, never at one already past
    (``run_immediately`` of zero: unpausing starts nothing by itself)."""
    return CronTriggerTimetable(cron, timezone="UTC", run_immediately=dt.timedelta(0))


def ct_cron(spec: ModelSpec) -> str | None:
    """The CT DAG's cron (a preset resolved), or None when it only runs on retrain requests."""
    from mlops_airflow.core.spec import schedule_cron

    schedule = spec.ct_schedule  # ``retrain.schedule`` when set, else ``schedule``
    if schedule is None:
        return None
    try:
        return schedule_cron(schedule)
    except ValueError as err:  # a spec object built without validation
        raise ModelSpecError(f"{spec.name}: schedule: {err}") from None


def ct_schedule(spec: ModelSpec) -> Any:
    """The spec's cron OR a retrain request from ``monitor_<model>`` (or an operator)."""
    cron = ct_cron(spec)
    if cron is None:
        return retrain_asset(spec)
    return AssetOrTimeSchedule(timetable=cron_timetable(cron), assets=retrain_asset(spec))


def ct_description(spec: ModelSpec) -> str:
    """The DAG list shows the asset of an asset-or-cron schedule only: the description names both."""
    cron = ct_cron(spec)
    when = f"cron {cron} (UTC) or a retrain request" if cron else "on retrain requests only"
    return f"Continuous training of {spec.name}: {when}"


def notified(spec: ModelSpec, event: str, hook: str = "on_success_callback") -> dict[str, Any]:
    """Task kwargs that send ``event`` through the spec's ``notify`` section (none without one)."""
    if spec.notify is None or event not in spec.notify.events:
        return {}
    from mlops_airflow.operators.notify import ModelEventNotifier

    return {hook: ModelEventNotifier(event=event, model_name=spec.name)}


def ct_doc(spec: ModelSpec) -> str:
    return f"""### Continuous training of `{spec.name}`

{spec.description}

snapshot -> validate_data -> train (one mapped task per candidate) -> select_candidate
-> evaluate_vs_champion -> gate -> register_challenger -> smoke_test -> promote

* Schedule: `{spec.ct_schedule}` (UTC) **or** asset `{spec.retrain_asset_uri}`.
* Bad data fails `validate_data`; a candidate that is not provably no worse than `champion` stops at `gate`.
* MLflow: experiment and registered model `{spec.name}`; each task links to its MLflow run.
* Trigger with config: `data_uri` reads another landing zone, `reason` is recorded in MLflow.
"""


def build_ct_dag(spec: ModelSpec) -> DAG:
    from mlops_airflow.operators.data import SnapshotOperator, ValidateDataOperator
    from mlops_airflow.operators.deploy import (
        EvaluateVsChampionOperator,
        GateOperator,
        PromoteOperator,
        RegisterChallengerOperator,
        SmokeTestOperator,
    )
    from mlops_airflow.operators.training import (
        CANDIDATE_MAP_INDEX_TEMPLATE,
        SelectCandidateOperator,
        TrainCandidateOperator,
    )

    with model_dag(
        spec,
        f"ct_{spec.name}",
        "continuous-training",
        description=ct_description(spec),
        doc_md=ct_doc(spec),
        schedule=ct_schedule(spec),
        params={
            "data_uri": data_uri_param("Landing zone (path or URI) to train on instead of the spec's source.uri"),
            # null allowed: the trigger form treats a plain string param as required and keeps Trigger disabled
            "reason": Param(
                None,
                type=["null", "string"],
                description="Why this run was started (optional; recorded in MLflow as mlops.trigger.reason)",
            ),
        },
    ) as dag:
        common = {"model_name": spec.name}
        snapshot = SnapshotOperator(task_id="snapshot", data_uri="{{ params.data_uri or '' }}", **common)
        validate = ValidateDataOperator(
            task_id="validate_data",
            snapshot=snapshot.output,
            **notified(spec, "validation_failed", "on_failure_callback"),
            **common,
        )
        grid = [{"index": i, "params": p} for i, p in enumerate(candidate_grid(spec))]
        fit_timeout = dt.timedelta(minutes=spec.estimator.fit_timeout_minutes)  # no fit holds a slot for ever
        train = TrainCandidateOperator.partial(
            task_id="train",
            snapshot=snapshot.output,
            map_index_template=CANDIDATE_MAP_INDEX_TEMPLATE,
            execution_timeout=fit_timeout,
            **common,
        ).expand(candidate=grid)
        select = SelectCandidateOperator(
            task_id="select_candidate",
            snapshot=snapshot.output,
            candidates=train.output,
            execution_timeout=fit_timeout,
            **common,
        )
        evaluate = EvaluateVsChampionOperator(
            task_id="evaluate_vs_champion", snapshot=snapshot.output, candidate=select.output, **common
        )
        gate = GateOperator(
            task_id="gate", evaluation=evaluate.output, retries=0, **notified(spec, "gate_rejected"), **common
        )
        register = RegisterChallengerOperator(
            task_id="register_challenger",
            snapshot=snapshot.output,
            candidate=select.output,
            decision=gate.output,
            **common,
        )
        smoke = SmokeTestOperator(task_id="smoke_test", snapshot=snapshot.output, registered=register.output, **common)
        promote = PromoteOperator(
            task_id="promote",
            registered=register.output,
            pool=REGISTRY_POOL,
            **notified(spec, "promotion"),
            **common,
        )
        snapshot >> validate >> train >> select >> evaluate >> gate >> register >> smoke
        if spec.gate.require_approval:
            from airflow.providers.standard.operators.hitl import ApprovalOperator

            approve = ApprovalOperator(
                task_id="approve",
                subject=f"Promote {spec.name} to champion?",
                body=(
                    "The gate blessed this candidate and its smoke test passed. Read the gate report in "
                    "MLflow (artifact gate/report.md of this run) before approving."
                ),
                execution_timeout=dt.timedelta(days=2),
                notifiers=list(notified(spec, "approval_waiting").values()),
            )
            smoke >> approve >> promote
        else:
            smoke >> promote
    return dag


def build_rollback_dag(spec: ModelSpec) -> DAG:
    from mlops_airflow.operators.deploy import RollbackOperator

    with model_dag(
        spec,
        f"rollback_{spec.name}",
        "rollback",
        description=f"Move the champion of {spec.name} back to its last good champion (manual only)",
        doc_md=f"""### Rollback of `{spec.name}`

Moves alias `champion` to the last *good* champion before the current one (default: the newest version in
the champion ledger that served and was not rolled away from since) or to the chosen `version`, which must
exist and have been blessed by the gate (proven from its own CT run, not from a tag). `reason` is required
and kept as tags on both versions. The version rolled back to is pinned: no CT run moves `champion` until a person runs
this DAG with `unpin: true` or a gate blesses a candidate judged against the pinned version. Runs in pool
`{REGISTRY_POOL}`, so it never races a promotion.
""",
        schedule=None,
        params={
            "version": Param(
                None,
                type=["null", "string"],
                description=(
                    "Version to serve; empty = the last good champion before the current one (champion ledger). "
                    "It must be a version the gate blessed: a wrong one fails and lists the blessed versions"
                ),
            ),
            "reason": Param(
                "",
                type="string",
                minLength=1,
                description="Required (Trigger stays disabled until filled): why, kept as audit on the versions",
            ),
            "unpin": Param(False, type="boolean", description="Only remove a rollback's pin; move nothing"),
        },
    ) as dag:
        RollbackOperator(
            task_id="rollback",
            model_name=spec.name,
            version="{{ params.version or '' }}",
            reason="{{ params.reason }}",
            unpin="{{ params.unpin }}",
            pool=REGISTRY_POOL,
            retries=0,
            **notified(spec, "rollback"),
        )
    return dag


def build_predict_dag(spec: ModelSpec) -> DAG:
    from mlops_airflow.operators.monitoring import PredictOperator

    with model_dag(
        spec,
        f"predict_{spec.name}",
        "batch-scoring",
        description=f"Batch scoring with models:/{spec.name}@champion",
        doc_md=f"""### Batch scoring of `{spec.name}`

Scores every batch in the scoring zone (`{spec.scoring_uri}` under the data root, or the `data_uri` param)
that has no predictions yet, with the version that holds `champion` when the task runs. Each row keeps its
input columns and gets `prediction`, `model_version` and `predicted_at`. Runs when asset
`{spec.scoring_asset_uri}` is updated (a landing job emits it) or by hand; emits `{spec.predictions_asset_uri}`.
""",
        schedule=Asset(uri=spec.scoring_asset_uri, name=f"{spec.name}_scoring_data"),
        params={
            "data_uri": data_uri_param("Batch file or directory to score"),
        },
    ) as dag:
        PredictOperator(
            task_id="predict",
            model_name=spec.name,
            data_uri="{{ params.data_uri or '' }}",
            outlets=[Asset(uri=spec.predictions_asset_uri, name=f"{spec.name}_predictions")],
        )
    return dag


def build_monitor_dag(spec: ModelSpec) -> DAG:
    from mlops_airflow.operators.monitoring import MonitorOperator, RequestRetrainOperator

    d = spec.drift
    with model_dag(
        spec,
        f"monitor_{spec.name}",
        "monitoring",
        description=f"Drift and live performance of the {spec.name} champion",
        doc_md=f"""### Monitoring of `{spec.name}`

`monitor` compares the newest {d.window_batches} landed batch(es) with the champion's training snapshot
(KS / chi-squared tests and PSI per feature; a feature drifts when p < {d.p_value} and PSI >= {d.psi_threshold})
and, where labels have arrived, the champion's live `{spec.primary}` with its evaluation figure. The drift
report and plots go to MLflow. `request_retrain` emits `{spec.retrain_asset_uri}` (which starts
`ct_{spec.name}`) when drift share >= {d.drift_share} or the metric fell by more than {d.max_metric_drop},
at most once per {d.cooldown_hours:g} h; otherwise it is skipped.
""",
        schedule=cron_timetable("0 6 * * *"),
        params={"data_uri": data_uri_param("Landing zone to monitor")},
    ) as dag:
        monitor = MonitorOperator(task_id="monitor", model_name=spec.name, data_uri="{{ params.data_uri or '' }}")
        RequestRetrainOperator(
            task_id="request_retrain",
            model_name=spec.name,
            decision=monitor.output,
            outlets=[retrain_asset(spec)],
            **notified(spec, "retrain_requested"),
        )
    return dag


def build_replay_dag(spec: ModelSpec) -> DAG:
    from mlops_airflow.operators.replay import ReplayOperator

    with model_dag(
        spec,
        f"replay_{spec.name}",
        "replay",
        description=f"Replay retrain policies over the landed history of {spec.name} (manual only)",
        doc_md=f"""### Replay of `{spec.name}`

Replays retrain policies over the model's own landed history (`{spec.source.uri}`, batches dated `from` to `to`;
earlier batches train the first champion) with the CT pipeline's functions, labels reaching CT
`label_delay_days` after their batch. Per policy: mean and worst deployed `{spec.primary}`, days below the gate
threshold, CT runs, models trained, compute seconds, corrupt batches served. The report (Markdown, JSON, PNG) goes
to the MLflow experiment `{spec.name}/replay`; the model's registry, aliases and storage are never touched.
See `docs/operations.md` (Replay).
""",
        schedule=None,
        params={
            "from": Param("", type="string", minLength=10, description="First replayed day (YYYY-MM-DD)"),
            "to": Param("", type="string", minLength=10, description="Last replayed day (YYYY-MM-DD)"),
            "policies": Param(
                ["spec", "never"],
                type="array",
                items={"type": "string"},
                description="Policies: spec, never, always, nightly, weekly, weekly_triggers, triggers",
            ),
            "label_delay_days": Param(
                spec.label.delay_days,
                type="integer",
                minimum=0,
                maximum=MAX_LABEL_DELAY_DAYS,
                description="Days until a batch's labels reach CT",
            ),
        },
    ) as dag:
        ReplayOperator(
            task_id="replay",
            model_name=spec.name,
            start="{{ params['from'] }}",
            end="{{ params['to'] }}",
            policies="{{ params.policies | join(',') }}",
            label_delay_days="{{ params.label_delay_days }}",
            retries=0,
        )
    return dag


OUTBOX_DAG_ID = "notify_outbox"


def build_outbox_dag() -> DAG:
    """Every 15 minutes, send the notifications that wait in the models' outboxes (after a failed delivery)."""
    from mlops_airflow.operators.notify import DeliverNotificationsOperator

    with DAG(
        dag_id=OUTBOX_DAG_ID,
        schedule=cron_timetable("*/15 * * * *"),
        catchup=False,
        max_active_runs=1,
        tags=["mlops", "notifications"],
        description="Retry the notifications that wait in the models' outboxes",
        doc_md="""### Notification outbox

Sends what waits in `MLOPS_STORAGE_BASE/<model>/outbox/` for every model: messages whose delivery failed
(SMTP server or Slack down) and whose next attempt time has come, oldest first, each only on the channels
that have not taken it. Trigger it with `force` to send every waiting message now, backoff or not.
""",
        params={"force": Param(False, type="boolean", description="Send every waiting message now, backoff or not")},
    ) as dag:
        DeliverNotificationsOperator(task_id="deliver", force="{{ params.force }}", retries=0)
    return dag


class InvalidModelSpecWarning(UserWarning):
    """A model YAML that cannot be used: its model gets no DAGs, the others are unaffected."""


def invalid_spec_dag_id(path: Path) -> str:
    """``ct_<file stem>`` (made a valid DAG id): where the model's CT DAG would be."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)[:200] or "unnamed"
    return f"ct_{stem}"


def build_invalid_spec_dag(path: Path, error: ModelSpecError) -> DAG:
    """A stand-in DAG for a bad YAML: listed in the UI (tag ``invalid-spec``) with the file, key and reason.

    It never runs on a schedule and starts paused; triggered by hand, its one task fails with the error.
    """
    message = str(error)
    with DAG(
        dag_id=invalid_spec_dag_id(path),
        start_date=START_DATE,
        schedule=None,
        catchup=False,
        is_paused_upon_creation=True,
        tags=["mlops", "invalid-spec"],
        description=("INVALID MODEL SPEC: " + message.replace("\n", " "))[:1000],
        doc_md=f"### Invalid model spec `{path.name}`\n\nThis model has no DAGs until its YAML is fixed:\n\n"
        f"```\n{message}\n```\n",
    ) as dag:
        InvalidSpecOperator(task_id="invalid_spec", message=message, doc_md=message, retries=0)
    return dag


class InvalidSpecOperator(BaseOperator):
    """Fails with the spec error: what a run of a model with a bad YAML does."""

    ui_color = "#f5b7b1"

    def __init__(self, *, message: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.message = message

    def execute(self, context: Any) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(self.message)


def build_dags(specs: list[ModelSpec] | None = None, directory: Path | None = None) -> dict[str, DAG]:
    """Every DAG of every model spec, keyed by DAG id.

    A YAML that fails validation breaks only its own model: it gets a stand-in DAG that shows the error and a
    warning in the parse log, while every good model keeps its DAGs.

    :param specs: the specs to build (default: every spec in ``directory``).
    :param directory: where the specs are read (default: :func:`mlops_airflow.core.config.models_dir`).
    """
    dags: dict[str, DAG] = {}
    errors: dict[Path, ModelSpecError] = {}
    if specs is None:
        specs, errors = load_specs_tolerant(directory)
    for spec in specs:
        for builder in (build_ct_dag, build_monitor_dag, build_predict_dag, build_rollback_dag, build_replay_dag):
            dag = builder(spec)
            dags[dag.dag_id] = dag
    dags[OUTBOX_DAG_ID] = build_outbox_dag()
    for path, error in errors.items():
        warnings.warn(str(error), InvalidModelSpecWarning, stacklevel=2)
        stand_in = build_invalid_spec_dag(path, error)
        if stand_in.dag_id not in dags:
            dags[stand_in.dag_id] = stand_in
    return dags


def model_dags(models_dir: str | os.PathLike[str]) -> dict[str, DAG]:
    """Every DAG of the model specs in ``models_dir``, keyed by DAG id: the whole of a DAG file::

        from mlops_airflow import model_dags

        globals().update(model_dags("include/models"))

    The folder becomes this process's models folder (:func:`mlops_airflow.core.config.use_models_dir`): a
    task's process parses the DAG file before it runs, so the task reads its spec from the same folder.

    :param models_dir: folder of the model YAMLs; a relative path is relative to the folder of the calling DAG
        file (so it travels with a DAG bundle), not to the working directory.
    :raises ModelSpecError: the folder does not exist (Airflow shows it as the DAG file's import error).
    """
    directory = Path(models_dir).expanduser()
    caller = sys._getframe(1).f_globals.get("__file__")
    if not directory.is_absolute():
        directory = (Path(caller).parent if caller else Path.cwd()) / directory
    if not directory.is_dir():
        raise ModelSpecError(
            f"{directory}: no folder of model specs there (model_dags({str(models_dir)!r}) in {caller or 'the caller'})"
        )
    return build_dags(directory=use_models_dir(directory))
