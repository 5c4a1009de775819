"""``train`` (one mapped task per candidate) and ``select_candidate`` of ``ct_<model>``."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from mlops_airflow.operators.base import MlopsBaseOperator, candidate_threads, load_snapshot

if TYPE_CHECKING:
    from airflow.sdk import Context


def candidate_label(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "defaults"


@contextlib.contextmanager
def quiet_skops_scan() -> Iterator[None]:
    """Drop the warnings skops causes while it serialises a pipeline.

    To name the module of an object without ``__module__`` (a ufunc), skops calls ``getattr`` on every module
    in ``sys.modules``; on Airflow's deprecated shim modules (``airflow.utils.*``) each call warns. Its import
    does the same for every scipy ufunc: import it with
    :func:`~mlops_airflow.core.served_model.import_skops_io`.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"skops\.")
        yield


#: What loading and serving a logged pipeline needs (the spec only admits ``sklearn.*`` estimators).
SERVING_PACKAGES = ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")


def serving_requirements() -> list[str]:
    """The model's pinned requirements, the same wherever the task runs.

    Left to itself, MLflow exports the whole ``uv.lock`` when the task's working directory holds one (Airflow
    and all: a serving image would install the scheduler) and infers from imports elsewhere.
    """
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in SERVING_PACKAGES]


def trusted_types(pipeline: Any, dumped: bytes | None = None) -> list[str]:
    """Types skops must trust to load a pipeline this task built itself: sklearn and numpy ones only.

    :param dumped: the pipeline already serialised with ``skops.io.dumps`` (not serialised again).
    """
    from mlops_airflow.core.served_model import import_skops_io

    skops_io = import_skops_io()
    with quiet_skops_scan():
        found = skops_io.get_untrusted_types(data=skops_io.dumps(pipeline) if dumped is None else dumped)
    foreign = [t for t in found if not t.startswith(("sklearn.", "numpy."))]
    if foreign:
        raise TypeError(f"pipeline holds types that are not sklearn/numpy: {foreign}")
    return list(found)


#: The label of a mapped ``train`` task instance (grid and REST API): its hyperparameters, which ``execute``
#: puts in the context as ``candidate_label``. It must be given to ``.partial()``: the task runner builds the
#: context from the *mapped* operator's ``partial_kwargs`` before it unmaps (runs ``__init__``), so a default
#: set in ``__init__`` is never rendered and the UI shows 0..n.
CANDIDATE_MAP_INDEX_TEMPLATE = "{{ candidate_label }}"


def log_spec_model(
    spec: Any,
    pipeline: Any,
    example_rows: Any,
    threshold: float,
    *,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
) -> str:
    """Log a fitted pipeline as the spec's pyfunc model in the active MLflow run; its model URI.

    Logged as code (``core/served_model.py`` travels with the model), so serving it needs no mlops_airflow;
    the pipeline is a skops artifact that loads with scikit-learn and numpy types only.
    """
    import os
    import tempfile
    from pathlib import Path

    import mlflow

    from mlops_airflow.core import served_model, tracking
    from mlops_airflow.core.scoring import model_config, model_input, model_signature

    with quiet_skops_scan():
        dumped = served_model.import_skops_io().dumps(pipeline)  # serialised once: checked, then logged
    config = model_config(spec, threshold, trusted_types(pipeline, dumped))
    example = model_input(spec, example_rows.head(5))
    with tempfile.TemporaryDirectory(dir=tracking.scratch_dir()) as scratch:
        pipeline_file = Path(scratch) / "pipeline.skops"
        pipeline_file.write_bytes(dumped)
        # MLflow would also copy the working directory's uv.lock/pyproject.toml (Airflow and all) when it is a
        # uv project; the pinned requirements are what serving needs.
        os.environ["MLFLOW_UV_AUTO_DETECT"] = "false"
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=served_model.__file__,
            artifacts={"pipeline": str(pipeline_file)},
            model_config=config,
            signature=model_signature(spec, example, served_model.model_output(pipeline, example, config)),
            input_example=example,
            params=params,
            tags=tags,
            pip_requirements=serving_requirements(),
        )
    return str(info.model_uri)


class TrainCandidateOperator(MlopsBaseOperator):
    """Fit one candidate of the search space as a nested MLflow run; a retry reuses a finished run.

    Its XCom and its run's :data:`SELECTION_ARTIFACT` carry an undefined metric as ``null``; the task log says
    which and why. Too few selection or evaluation rows fail the task without retries, with the numbers.

    Map it with ``.partial(..., map_index_template=CANDIDATE_MAP_INDEX_TEMPLATE)``.

    :param snapshot: the ``snapshot`` task's XCom.
    :param candidate: ``{"index": i, "params": {...}}``, one entry of the spec's grid (mapped over).
    """

    template_fields: Sequence[str] = ("model_name", "snapshot")
    ui_color = "#d5f5e3"

    def __init__(self, *, snapshot: Any, candidate: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.snapshot = snapshot
        self.candidate = candidate

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_airflow.core import tracking
        from mlops_airflow.core.encoding import jsonable

        index, params = int(self.candidate["index"]), dict(self.candidate["params"])
        context["candidate_label"] = candidate_label(params)  # type: ignore[typeddict-unknown-key]
        parent = self.parent_run_id(context)
        child = tracking.get_or_create_run(
            self.client,
            self.experiment_id,
            {tracking.PARENT_TAG: parent, tracking.TAG_CANDIDATE: str(index), tracking.TAG_KIND: "candidate"},
            {tracking.TAG_DAG_ID: self.dag_id, tracking.TAG_RUN_ID: context["run_id"]},
            run_name=f"candidate-{index}",
        )
        self.link_run(child)
        run = self.client.get_run(child)
        # fit_seconds is logged last, after every defined metric (an undefined one is never logged)
        if run.info.status == "FINISHED" and "fit_seconds" in run.data.metrics:
            self.log.info("candidate %s already trained in MLflow run %s: reusing it", index, child)
            done = self._reuse(run)
        else:
            done = self._fit(child, params)
        metrics = done["metrics"]
        self.log.info("candidate %s (%s): %s", index, candidate_label(params), jsonable(metrics))
        for metric, reason in (done.get("undefined") or {}).items():
            self.log.warning(
                "candidate %s (%s): selection metric %s is undefined (null): %s",
                index,
                candidate_label(params),
                metric,
                reason,
            )
        return jsonable({"index": index, "params": params, "mlflow_run_id": child, **done})

    def _fit(self, child: str, params: dict[str, Any]) -> dict[str, Any]:
        """Fit the candidate, log it to its run and finish the run."""
        from threadpoolctl import threadpool_limits

        from mlops_airflow.core import tracking
        from mlops_airflow.core.data import load_part
        from mlops_airflow.core.training import large_buffers_to_os, train_candidate

        large_buffers_to_os()
        spec = self.spec
        snapshot = load_snapshot(self.snapshot)
        with refused_split():
            check_evaluation(spec, snapshot)  # before the fit: a gate without enough rows fails now
            train = load_part(snapshot, "train", spec.input_columns, spec.text_columns)
            threads = candidate_threads()
            self.log.info("fitting candidate %s with %s native thread(s)", self.candidate["index"], threads or "all")
            with threadpool_limits(limits=threads):
                fitted = train_candidate(spec, params, train)
        done = {
            "metrics": fitted.metrics,
            "fit_seconds": round(fitted.seconds, 3),
            "threshold": float(fitted.threshold),
            "selection": fitted.selection,
            "undefined": fitted.undefined,
        }
        tracking.log_params(self.client, child, {**spec.estimator.params, **params})
        tracking.log_metrics(self.client, child, fitted.metrics, prefix="val_")
        tracking.log_json(self.client, child, done, SELECTION_ARTIFACT)
        tracking.log_metrics(
            self.client, child, {"fit_seconds": fitted.seconds, "decision_threshold": fitted.threshold}
        )
        self.client.set_terminated(child, "FINISHED")
        return done

    def _reuse(self, run: Any) -> dict[str, Any]:
        """What a finished run of this candidate recorded (undefined metrics were never logged: ``None``)."""
        from mlops_airflow.core import tracking

        logged = run.data.metrics
        recorded = tracking.load_json(self.client, run.info.run_id, SELECTION_ARTIFACT) or {}
        return {
            "metrics": {m: logged.get(f"val_{m}") for m in self.spec.metric_names},
            "fit_seconds": round(logged.get("fit_seconds", 0.0), 3),
            "threshold": float(logged.get("decision_threshold", 0.5)),
            "selection": recorded.get("selection") or {},
            "undefined": recorded.get("undefined") or {},
        }


#: A candidate run's record of its selection rows, metrics (null where undefined) and why any is undefined.
SELECTION_ARTIFACT = "selection/candidate.json"


@contextlib.contextmanager
def refused_split() -> Iterator[None]:
    """A window too small to select or gate on, or rows the spec or the estimator cannot take (a ``log: true``
    value below -1, a Poisson label below 0), fail the task without retries: the data will not change."""
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow.core.errors import RowsError
    from mlops_airflow.core.training import SplitError

    try:
        yield
    except (SplitError, RowsError) as err:
        raise AirflowFailException(str(err)) from None


def check_evaluation(spec: Any, snapshot: Any, labels: Any = None) -> dict[str, Any]:
    """:func:`~mlops_airflow.core.training.check_evaluation_set` of the snapshot's evaluation set (its label
    column is read alone unless ``labels`` are given)."""
    from mlops_airflow.core.data import load_part
    from mlops_airflow.core.training import check_evaluation_set

    if labels is None:
        labels = load_part(snapshot, "eval", [spec.label.name])[spec.label.name]
    return check_evaluation_set(spec, labels, snapshot)


class SelectCandidateOperator(MlopsBaseOperator):
    """Pick the best candidate on the selection rows, refit it on the whole training window and log it.

    The logged model carries its signature and an input example; the run gets the dataset inputs (with
    the snapshot's content hash), the candidate's metrics on the evaluation set, its plots and
    :data:`SELECTION_ARTIFACT` (the chosen candidate's metrics, ``null`` where undefined, and why).

    :param snapshot: the ``snapshot`` task's XCom.
    :param candidates: the mapped ``train`` task's XComs.
    """

    template_fields: Sequence[str] = ("model_name", "snapshot", "candidates")
    ui_color = "#d5f5e3"

    def __init__(self, *, snapshot: Any, candidates: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.snapshot = snapshot
        self.candidates = candidates

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from mlops_airflow.core.encoding import jsonable
        from mlops_airflow.core.training import CandidateResult, best_candidate

        spec = self.spec
        results = [
            CandidateResult(
                int(c["index"]),
                dict(c["params"]),
                dict(c["metrics"]),
                float(c["fit_seconds"]),
                float(c.get("threshold", 0.5)),
                {"selection": c.get("selection") or {}, "undefined": c.get("undefined") or {}},
            )
            for c in (self.candidates[i] for i in range(len(self.candidates)))
            if c
        ]
        try:
            best = best_candidate(spec, results)
        except ValueError as err:  # no candidate has a defined primary metric: a retry would not change that
            raise AirflowFailException(str(err)) from None
        parent = self.parent_run_id(context)
        run = self.client.get_run(parent)
        model_uri = run.data.tags.get("mlops.candidate_model_uri")
        if model_uri and run.data.tags.get("mlops.selected_candidate") == str(best.index):
            self.log.info("candidate model already logged: %s", model_uri)
            eval_metrics = {m: run.data.metrics.get(f"eval_{m}") for m in spec.metric_names}
        else:
            model_uri, eval_metrics = self._refit_and_log(parent, best)
        self.log.info("selected candidate %s (%s): %s", best.index, candidate_label(best.params), model_uri)
        self.log.info("chose candidate %s of %d: the best %s on the selection rows, %s", best.index, len(results),
                      spec.primary, best.metrics.get(spec.primary))  # fmt: skip
        return jsonable(
            {
                "model_uri": model_uri,
                "candidate_index": best.index,
                "params": best.params,
                "threshold": best.threshold,
                "validation_metrics": best.metrics,
                "eval_metrics": eval_metrics,
                "mlflow_run_id": parent,
            }
        )

    def _refit_and_log(self, parent: str, best: Any) -> tuple[str, dict[str, float]]:
        import mlflow

        from mlops_airflow.core import served_model, tracking
        from mlops_airflow.core.data import load_part
        from mlops_airflow.core.evaluation import Target, compute_metrics, undefined_reasons
        from mlops_airflow.core.reports import evaluation_figures
        from mlops_airflow.core.reproduce import record_training_inputs
        from mlops_airflow.core.scoring import encode_labels, model_config, model_input, output_scores
        from mlops_airflow.core.training import fit_final, large_buffers_to_os

        large_buffers_to_os()
        spec = self.spec
        snapshot = load_snapshot(self.snapshot)
        columns = spec.input_columns
        evaluation = load_part(snapshot, "eval", columns)
        with refused_split():
            check_evaluation(spec, snapshot, evaluation[spec.label.name])
        train = load_part(snapshot, "train", columns, spec.text_columns)
        self._remove_unrecorded_models(parent)
        pipeline = fit_final(spec, best.params, train)
        config = model_config(spec, best.threshold, [])
        eval_output = served_model.model_output(pipeline, model_input(spec, evaluation), config)
        score = output_scores(eval_output, spec)
        y_eval = encode_labels(spec, evaluation[spec.label.name])
        target = Target.of(spec)
        eval_metrics = compute_metrics(target, y_eval, score, threshold=best.threshold)
        undefined = undefined_reasons(target, y_eval, score, eval_metrics)
        for metric, reason in undefined.items():
            self.log.warning("candidate %s: evaluation metric %s is undefined (null): %s", best.index, metric, reason)

        with mlflow.start_run(run_id=parent):
            for part, frame in (("train", train), ("eval", evaluation)):
                dataset = tracking.pandas_dataset(
                    frame,
                    source=f"{snapshot.uri}/{part}",
                    targets=spec.label.name,
                    name=f"{spec.name}-{part}",
                    digest=snapshot.content_hash[:36],
                )
                mlflow.log_input(dataset, context="training" if part == "train" else "evaluation")
            model_uri = log_spec_model(
                spec,
                pipeline,
                train,
                best.threshold,
                params={**spec.estimator.params, **best.params},
                tags={"mlops.data_hash": snapshot.content_hash, "mlops.candidate_index": str(best.index)},
            )
            mlflow.log_params({f"selected.{k}": v for k, v in best.params.items()})
        tracking.log_metrics(self.client, parent, eval_metrics, prefix="eval_")
        tracking.log_metrics(self.client, parent, best.metrics, prefix="val_")
        record = {
            "candidate_index": best.index,
            "validation_metrics": best.metrics,
            "eval_metrics": eval_metrics,
            "undefined": {"selection": best.extra.get("undefined") or {}, "evaluation": undefined},
            "selection": best.extra.get("selection") or {},
        }
        tracking.log_json(self.client, parent, record, SELECTION_ARTIFACT)
        # the spec, installed distributions and row hashes `mlops reproduce` compares (core/reproduce.py)
        record_training_inputs(self.client, parent, spec, train, evaluation)
        tracking.log_metrics(self.client, parent, {"decision_threshold": best.threshold})
        figures = evaluation_figures(target, y_eval, score, threshold=best.threshold)
        tracking.log_figures(self.client, parent, figures, "plots")
        self.client.set_tag(parent, "mlops.candidate_model_uri", model_uri)
        self.client.set_tag(parent, "mlops.selected_candidate", str(best.index))
        return model_uri, eval_metrics

    def _remove_unrecorded_models(self, parent: str) -> None:
        """Delete the logged models earlier tries of this task left in the run, if none is registered.

        Called when the run records no model for the selected candidate, so every logged model of the run is
        a leftover: PENDING (with its artifacts) from a try killed inside ``log_model``, FAILED if MLflow saw
        the error, READY from a try killed before it recorded the model, or recorded for a candidate no longer
        selected. None is reused: this try logs and records its own. Only a model the registry proves no
        version points at is deleted (:func:`~mlops_airflow.core.tracking.registered_models`): a registered
        one (a champion's) stays loadable and can be rolled back to. MLflow deletes logged models softly;
        ``mlflow gc`` frees their artifacts.
        """
        from mlops_airflow.core import tracking

        found = tracking.all_pages(
            self.client.search_logged_models,
            experiment_ids=[self.experiment_id],
            filter_string=f"source_run_id = '{parent}'",
        )
        if not found:
            return
        registered = tracking.registered_models(self.client, parent, found)
        if registered is None:
            self.log.warning(
                "run %s has a registered version whose source names no logged model: keeping its %d logged model(s)",
                parent,
                len(found),
            )
            return
        for model in found:
            if model.model_id in registered:
                self.log.info(
                    "keeping logged model %s of run %s: a registered version points at it", model.model_id, parent
                )
                continue
            self.log.warning(
                "deleting logged model %s (status %s, candidate %s) that an earlier try left in run %s",
                model.model_id,
                model.status,
                (model.tags or {}).get("mlops.candidate_index", "?"),
                parent,
            )
            self.client.delete_logged_model(model.model_id)
