"""From a selected candidate to ``champion``: evaluate, gate, register, smoke test, promote; and rollback.

The rule for promotion lives in :mod:`mlops_airflow.core.gate`; these operators only feed it and act on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import SkipMixin
from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow.core.serving_client import notify_model_server
from mlops_airflow.operators.base import MlopsBaseOperator, candidate_threads, load_snapshot

if TYPE_CHECKING:
    from airflow.sdk import Context

    from mlops_airflow.core.assessment import BaselineChoice
    from mlops_airflow.core.registry import Actor
    from mlops_airflow.core.trust import ModelRegistry


class _RegistryMixin:
    model_name: str
    client: Any
    signing_key: bytes | None

    @property
    def registry(self) -> ModelRegistry:
        from mlops_airflow.core.trust import ModelRegistry

        return ModelRegistry(self.client, self.model_name, signing_key=self.signing_key)

    @staticmethod
    def actor(context: Context) -> Actor:
        """The DAG run behind a registry write, and who triggered it (kept in the audit trail)."""
        from mlops_airflow.core.registry import Actor

        dag_run = context.get("dag_run")
        user = getattr(dag_run, "triggering_user_name", None) if dag_run is not None else None
        return Actor(dag_id=context["dag"].dag_id, run_id=context["run_id"], user=user or None)


class EvaluateVsChampionOperator(_RegistryMixin, MlopsBaseOperator):
    """Score the candidate and ``models:/<model>@champion`` on the same, newest evaluation rows.

    Both models are loaded as MLflow pyfunc models, as serving loads them; what is compared and how is
    :mod:`mlops_airflow.core.assessment` (the baseline, every metric of both, the paired bootstrap of the
    primary metric's difference, per-slice metrics, importance and fairness). This task records it in the CT
    run, logs the decision in a few lines and returns the small summary (XCom) the gate reads.

    :param snapshot: the ``snapshot`` task's XCom.
    :param candidate: the ``select_candidate`` task's XCom.
    """

    template_fields: Sequence[str] = ("model_name", "snapshot", "candidate")
    ui_color = "#fcf3cf"

    def __init__(self, *, snapshot: Any, candidate: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.snapshot = snapshot
        self.candidate = candidate

    def _baseline(self, context: Context) -> tuple[Any | None, BaselineChoice]:
        """The version to compare with (:func:`~mlops_airflow.core.assessment.choose_baseline`), proven blessed:
        a champion set by hand fails the run, naming it."""
        from mlops_airflow.core.assessment import choose_baseline

        champion = self.servable(required=False)
        version, tags = (None, None) if champion is None else (str(champion.version), champion.tags)
        choice = choose_baseline(version, tags, self.dag_id, context["run_id"])
        if choice.version is None:
            return None, choice
        return (champion if choice.version == version else self.servable(version=choice.version)), choice

    def execute(self, context: Context) -> dict[str, Any]:
        import os

        from mlops_airflow.core import tracking
        from mlops_airflow.core.assessment import COMPARISON_ARTIFACT, Scored, describe, evaluate
        from mlops_airflow.core.data import load_part
        from mlops_airflow.core.errors import MlopsError
        from mlops_airflow.core.explain import recorded_importance
        from mlops_airflow.core.gate import CHAMPION_BREACH_TAG
        from mlops_airflow.core.scoring import encode_labels, load_model, model_threshold, predict_rows

        spec = self.spec
        parent = self.parent_run_id(context)
        rows = load_part(load_snapshot(self.snapshot), "eval", spec.input_columns)
        baseline, choice = self._baseline(context)

        def scored(uri: str) -> Scored:
            model = load_model(uri)
            return Scored(model, predict_rows(spec, model, rows)[1], model_threshold(model))

        recorded = None
        if baseline is not None:
            recorded = recorded_importance(self.client, spec, str(baseline.version), baseline.run_id)
        try:
            done = evaluate(
                spec,
                rows,
                encode_labels(spec, rows[spec.label.name]),
                scored(self.candidate["model_uri"]),
                None if baseline is None else scored(baseline.uri),
                champion_version=choice.version,
                recorded=recorded,
                workers=candidate_threads() or os.cpu_count() or 1,  # this task's share of the worker's cores
            )
        except MlopsError as err:  # the rows cannot be compared: a retry would not change that
            raise AirflowFailException(str(err)) from None
        result = done.result
        for line in describe(result, choice):
            self.log.info("%s", line)
        tracking.log_metrics(self.client, parent, result["candidate"], prefix="candidate_")
        if done.calibration is not None:  # what a label-free estimate of this model can rest on
            ece = {"candidate_ece": done.calibration["raw_ece"], "candidate_excess_ece": done.calibration["excess_ece"]}
            tracking.log_metrics(self.client, parent, ece)
            tracking.log_json(self.client, parent, done.calibration, "evaluation/calibration.json")
        if result["champion"] is not None:
            tracking.log_metrics(self.client, parent, result["champion"], prefix="champion_")
            self.client.set_tag(parent, "mlops.champion_version", choice.version)
        if done.champion_breach:
            self.log.warning("%s", done.champion_breach)
            self.client.set_tag(parent, CHAMPION_BREACH_TAG, done.champion_breach[:5000])
        for path, data in done.artifacts.items():
            tracking.log_json(self.client, parent, data, path)
        for folder, figures in done.figures.items():
            tracking.log_figures(self.client, parent, figures, folder)
        tracking.log_json(self.client, parent, result, COMPARISON_ARTIFACT)
        return result


class GateOperator(MlopsBaseOperator, SkipMixin):
    """Apply the spec's gate to the evaluation; not blessed = downstream tasks skipped, not a crash.

    The decision goes to XCom (``gate_decision``), the task log, and MLflow (tags, JSON and Markdown).

    :param evaluation: the ``evaluate_vs_champion`` task's XCom.
    """

    template_fields: Sequence[str] = ("model_name", "evaluation")
    ui_color = "#fadbd8"

    def __init__(self, *, evaluation: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.evaluation = evaluation

    def _nothing_new(self, parent: str) -> dict[str, Any] | None:
        """A "nothing new" decision when this run's snapshot hash and code (git commit) equal those of the
        champion it was evaluated against: a new version would only duplicate the champion. None otherwise,
        and when a commit is unknown (the same code cannot be proven then)."""
        from mlops_airflow.core.trust import ModelRegistry

        champion_version = self.evaluation.get("champion_version")
        if not champion_version:
            return None
        champion = ModelRegistry(self.client, self.model_name).version(str(champion_version))
        if champion is None:
            return None
        run_tags = self.client.get_run(parent).data.tags
        mine = (run_tags.get("mlops.data_hash"), run_tags.get("mlops.git_commit"))
        theirs = ((champion.tags or {}).get("mlops.data_hash"), (champion.tags or {}).get("mlops.git_commit"))
        if None in mine or "unknown" in mine or mine != theirs:
            return None
        reason = (
            f"nothing new: snapshot hash {str(mine[0])[:16]}... and code {str(mine[1])[:12]} are those of "
            f"champion v{champion_version}; nothing registered, champion stays"
        )
        return {
            "blessed": False,
            "nothing_new": True,
            "reason": reason,
            "champion_version": str(champion_version),
            "primary_metric": self.evaluation.get("primary_metric"),
        }

    def _skip_downstream(self, context: Context) -> None:
        downstream = list(context["task"].get_flat_relatives(upstream=False))
        if downstream:
            self.skip(ti=context["ti"], tasks=downstream)

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_airflow.core import tracking
        from mlops_airflow.core.assessment import report_markdown
        from mlops_airflow.core.gate import BootstrapResult, decide

        ev = self.evaluation
        same = self._nothing_new(self.parent_run_id(context))
        if same is not None:  # the same data and code as the champion: nothing to gate, nothing to register
            parent = self.parent_run_id(context)
            self.client.set_tag(parent, "mlops.gate.blessed", "false")
            self.client.set_tag(parent, "mlops.gate.reason", same["reason"])
            tracking.record_verdict(self.client, parent, "nothing new", same["reason"])
            tracking.log_json(self.client, parent, same, "gate/decision.json")
            context["ti"].xcom_push(key="gate_decision", value=same)
            self.client.set_terminated(parent, "FINISHED")
            self.log.warning("NOTHING NEW: %s", same["reason"])
            self._skip_downstream(context)
            return same
        boot = ev.get("bootstrap")
        decision = decide(
            self.spec.gate,
            primary_metric=ev["primary_metric"],
            candidate=ev["candidate"],
            champion=ev.get("champion"),
            bootstrap=BootstrapResult(**boot) if boot else None,
            slices=ev.get("slices"),
            champion_version=ev.get("champion_version"),
            fairness=ev.get("fairness"),
        )
        parent = self.parent_run_id(context)
        data = decision.to_dict()
        report = decision.to_markdown() + "\n" + report_markdown(ev, ev["primary_metric"])
        self.client.set_tag(parent, "mlops.gate.blessed", str(decision.blessed).lower())
        self.client.set_tag(parent, "mlops.gate.reason", decision.reason[:5000])
        tracking.log_json(self.client, parent, data, "gate/decision.json")
        tracking.log_text(self.client, parent, report, "gate/report.md")
        context["ti"].xcom_push(key="gate_decision", value=data)
        self.log.info("gate decision for %s:\n%s", self.model_name, report)
        if not decision.blessed:
            tracking.record_verdict(self.client, parent, "not blessed", decision.reason)
            self.client.set_terminated(parent, "FINISHED")
            self.log.warning("NOT BLESSED: %s; champion stays where it is", decision.reason)
            downstream = [t for t in context["task"].get_flat_relatives(upstream=False)]
            if downstream:
                self.skip(ti=context["ti"], tasks=downstream)
        return data


class RegisterChallengerOperator(_RegistryMixin, MlopsBaseOperator):
    """Register the blessed candidate as a new version with alias ``challenger``; once per DAG run.

    :param snapshot: the ``snapshot`` task's XCom.
    :param candidate: the ``select_candidate`` task's XCom.
    :param decision: the ``gate`` task's XCom.
    """

    template_fields: Sequence[str] = ("model_name", "snapshot", "candidate", "decision")
    ui_color = "#e8daef"

    def __init__(self, *, snapshot: Any, candidate: Any, decision: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.snapshot = snapshot
        self.candidate = candidate
        self.decision = decision

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_airflow.core import settings, tracking
        from mlops_airflow.core.model_card import CARD_HTML, card_uri, log_card
        from mlops_airflow.core.registry import CHALLENGER

        if not self.decision.get("blessed"):  # the gate skips this task; refuse all the same
            raise AirflowFailException(f"{self.model_name}: refusing to register a candidate not blessed")
        self.require_signing_key()
        parent = self.parent_run_id(context)
        registry = self.registry
        version = registry.version_of_run(self.dag_id, context["run_id"])
        if version is None:
            tags = {
                "airflow.dag_id": self.dag_id,
                "airflow.run_id": context["run_id"],
                "airflow.try_number": str(context["ti"].try_number),
                "mlops.data_hash": self.snapshot["content_hash"],
                "mlops.snapshot_uri": self.snapshot["snapshot_uri"],
                "mlops.validation": "passed",
                "mlops.gate.blessed": "true",
                "mlops.gate.reason": self.decision.get("reason", "")[:5000],
                "mlops.gate.first_run": str(self.decision.get("first_run", False)).lower(),
                "mlops.gate.champion_version": str(self.decision.get("champion_version") or ""),
                "mlops.git_commit": settings.git_commit(),
                "mlops.mlflow_run_id": parent,
            }
            version = registry.register(
                self.candidate["model_uri"],
                parent,
                tags,
                description=f"Trained by {self.dag_id} run {context['run_id']}; model card: "
                f"{card_uri(parent, CARD_HTML)}; gate: {tags['mlops.gate.reason']}",
            )
        else:
            self.log.info("version %s was already registered by this DAG run", version.version)
        # Signed from the gate's own output (XCom, which only Airflow writes), never from MLflow state; a
        # retry re-signs the same bytes. No key, no signature: the version could never serve, so fail here.
        self.require_signing_key()
        registry.sign(str(version.version), self.decision)
        log_card(
            self.client,
            self.spec,
            run_id=parent,
            version=str(version.version),
            snapshot=self.snapshot,
            decision=self.decision,
        )
        registry.set_alias(CHALLENGER, str(version.version))
        self.client.set_tag(parent, "mlops.registered_version", str(version.version))
        self.log.info(
            "registered %s version %s, signed by the gate, alias %s", self.model_name, version.version, CHALLENGER
        )
        self.mlflow_url = tracking.model_url(self.model_name, version.version)
        return {
            "version": str(version.version),
            "model_uri": f"models:/{self.model_name}/{version.version}",
            "mlflow_run_id": parent,
            "judged_against": self.decision.get("champion_version"),
        }


class SmokeTestOperator(MlopsBaseOperator):
    """Load ``models:/<model>@challenger`` in a fresh process and check outputs and latency.

    :param snapshot: the ``snapshot`` task's XCom (evaluation rows to predict on).
    :param registered: the ``register_challenger`` task's XCom.
    """

    template_fields: Sequence[str] = ("model_name", "snapshot", "registered")
    ui_color = "#e8daef"

    def __init__(self, *, snapshot: Any, registered: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.snapshot = snapshot
        self.registered = registered

    def execute(self, context: Context) -> dict[str, Any]:
        import json
        import os
        from pathlib import Path

        from mlops_airflow.core import tracking
        from mlops_airflow.core.data import load_part
        from mlops_airflow.core.fresh_process import run_in_fresh_process, start_server
        from mlops_airflow.core.registry import CHALLENGER
        from mlops_airflow.core.scoring import model_input

        start_server()  # its imports run while this task reads the rows and the registry
        spec = self.spec
        parent = self.parent_run_id(context)
        x = model_input(spec, load_part(load_snapshot(self.snapshot), "eval", spec.input_columns))
        scratch = Path(tracking.scratch_dir())
        rows_file = scratch / "rows.parquet"
        x.head(spec.smoke_test.rows).to_parquet(rows_file, index=False)
        challenger = self.servable(alias=CHALLENGER)  # proven blessed, as the server will require
        if str(challenger.version) != str(self.registered["version"]):
            raise AirflowFailException(
                f"{spec.name}: alias challenger points at version {challenger.version}, this run registered "
                f"{self.registered['version']}; another run moved it"
            )
        # The child loads the artifacts of the version checked above, not whatever the alias names by the time
        # it asks (another run may move it), and needs no registry lookup of its own (a store connection and
        # schema check, ~1 s on a local store).
        source = self.client.get_model_version_download_uri(spec.name, str(challenger.version))
        argv = [
            "--model-uri", source,
            "--rows", str(rows_file),
            "--task", spec.kind,
            "--classes", json.dumps(spec.classes),
            "--max-latency-ms", str(spec.smoke_test.max_latency_ms_per_row),
        ]  # fmt: skip
        if spec.smoke_test.serve:
            argv.append("--serve")
        # One OpenMP thread: the budget is per-row serving latency, and spinning OpenMP workers on a busy
        # worker host make a timing say more about the neighbours than about the model.
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.hook.tracking_uri, "OMP_NUM_THREADS": "1"}
        # A fresh process that imported no module of this package nor of this task: forked from a server that
        # preloaded the third-party libraries (started at the first smoke test of this process), or a new
        # interpreter (MLOPS_SMOKE_FRESH_INTERPRETER=1).
        returncode, stdout, stderr = run_in_fresh_process("mlops_airflow.core.smoke", argv, env=env, timeout=600)
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"smoke test process gave no result (exit {returncode}):\n{stderr[-3000:]}")
        result = {**json.loads(lines[-1]), "model_uri": f"models:/{spec.name}/{challenger.version}", "source": source}
        tracking.log_json(self.client, parent, result, "smoke_test/result.json")
        self.client.set_model_version_tag(
            spec.name, str(challenger.version), "mlops.smoke_test", str(result["passed"]).lower()
        )
        self.log.info("smoke test: %s", result)
        self.log.info("smoke test of %s version %s (alias %s): %s", spec.name, challenger.version, CHALLENGER,
                      "passed" if result["passed"] else f"failed: {result['problems']}")  # fmt: skip
        if not result["passed"]:
            raise AirflowFailException(f"{spec.name} v{challenger.version} failed its smoke test: {result['problems']}")
        return {
            "passed": True,
            "latency_ms_per_row": result["latency_ms_per_row"],
            "version": str(challenger.version),
        }


class PromoteOperator(_RegistryMixin, MlopsBaseOperator):
    """Move ``champion`` to this run's version (``previous_champion`` to the old one). Pool of one slot.

    Compare-and-set: the version moves in only if it is proven blessed (its source run's gate decision,
    and the signature when a key is set), ``champion`` is still the version the gate judged it against,
    and no rollback pinned another version. A stale or pinned promotion moves nothing, is recorded on the
    MLflow run and the version (tag ``mlops.promotion``), and ends the task as skipped: not an error to retry.

    :param registered: the ``register_challenger`` task's XCom.
    """

    template_fields: Sequence[str] = ("model_name", "registered")
    ui_color = "#abebc6"

    def __init__(self, *, registered: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.registered = registered
        self.promoted: tuple[str, Any] | None = None  # (tracking URI, model version) for OpenLineage

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the snapshot the version was trained on -> the model version now ``champion``."""
        from mlops_airflow.core.registry import CHAMPION
        from mlops_airflow.operators.lineage import promotion_lineage

        tracking_uri, version = self.promoted or ("", None)
        return promotion_lineage(tracking_uri, self.model_name, version, CHAMPION)

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_airflow.core import tracking
        from mlops_airflow.core.trust import UnblessedVersionError

        parent = self.parent_run_id(context)
        version = str(self.registered["version"])
        self.mlflow_url = tracking.model_url(self.model_name, version)
        reason = f"blessed by the gate in {self.dag_id} run {context['run_id']}"
        try:
            move = self.registry.promote(version, reason=reason, actor=self.actor(context))
        except UnblessedVersionError as err:
            self.client.set_tag(parent, "mlops.promotion", f"refused: {err}"[:5000])
            raise AirflowFailException(str(err)) from None
        self.log.info("champion of %s: %s", self.model_name, move)
        self.client.set_tag(parent, "mlops.promotion", move.outcome)
        tracking.record_verdict(
            self.client,
            parent,
            f"promoted v{version}" if move.outcome in {"promoted", "already champion"} else "not promoted",
            f"champion of {self.model_name}: {move.outcome} (v{version}, was v{move.from_version})",
        )
        self.client.set_terminated(parent, "FINISHED")
        if move.outcome.startswith(("stale", "pinned")):
            from airflow.sdk.exceptions import AirflowSkipException

            context["ti"].xcom_push(key="promotion", value=move.to_dict())
            self.log.warning("NOT PROMOTED: %s; champion stays at %s", move.outcome, move.from_version)
            raise AirflowSkipException(f"{self.model_name} v{version} not promoted: {move.outcome}")
        self.client.set_tag(parent, "mlops.promoted_version", version)
        self.promoted = (self.hook.tracking_uri, self.registry.version(version))
        notify_model_server(self.model_name, "promote", version, logger=self.log)
        return move.to_dict()


class RollbackOperator(_RegistryMixin, MlopsBaseOperator):
    """Move ``champion`` back to ``previous_champion`` or to a chosen version proven blessed, and pin it
    there (promotions leave it until a person unpins it or a gate runs against it); or, with ``unpin``,
    only remove the pin.

    :param version: version number, or empty for ``previous_champion`` (templated).
    :param reason: why (templated; required), kept on the versions and the pin as audit.
    :param unpin: ``true`` to remove a rollback's pin instead of moving anything (templated).
    """

    template_fields: Sequence[str] = ("model_name", "version", "reason", "unpin")
    ui_color = "#f5b7b1"

    def __init__(
        self, *, version: str | None = None, reason: str = "", unpin: bool | str = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.version = version
        self.reason = reason
        self.unpin = unpin

    def refuse(self, message: str) -> AirflowFailException:
        """A refused rollback: the reason on one ERROR line, the first thing the task log shows of the failure
        (Airflow 3 logs "Task failed with exception" and the traceback after it), and a failure without
        retries."""
        message = " ".join(message.split())
        self.log.error("ROLLBACK REFUSED: %s", message)
        return AirflowFailException(message)

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_airflow.core import tracking
        from mlops_airflow.core.registry import RegistryError

        reason = (self.reason or "").strip()
        if not reason:
            raise self.refuse("rollback needs a reason (param 'reason')")
        version = (str(self.version).strip() if self.version is not None else "") or None
        if version in {"None", "null"}:
            version = None
        actor = self.actor(context)
        if str(self.unpin).strip().lower() in {"true", "1", "yes"}:
            if version is not None:
                raise self.refuse("param 'unpin' removes the pin only: leave param 'version' empty")
            try:
                was = self.registry.unpin(reason, actor)
            except RegistryError as err:
                raise self.refuse(str(err)) from None
            self.log.info("champion of %s: %s", self.model_name, f"unpinned version {was}" if was else "no pin")
            return {"model": self.model_name, "unpinned": was}
        try:
            move = self.registry.rollback(f"{reason} (rollback by {actor})", actor, version)
        except RegistryError as err:
            raise self.refuse(str(err)) from None
        self.log.info("rollback of %s: %s", self.model_name, move)
        self.mlflow_url = tracking.model_url(self.model_name, move.to_version)
        notify_model_server(self.model_name, "rollback", str(move.to_version), logger=self.log)
        return move.to_dict()
