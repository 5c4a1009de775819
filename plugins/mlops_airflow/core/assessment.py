"""Candidate against champion on the same, newest evaluation rows: what ``evaluate_vs_champion`` decides.

Task-time module, pure: it reads no store and writes none (the operator loads the models, scores the rows and
records what comes back). It decides

* which version the candidate is judged against (:func:`choose_baseline`): the champion, or, when this DAG
  run's own version already is champion (the run is cleared and re-run after it promoted), the version it was
  judged against the first time;
* every metric of both, the paired bootstrap of the primary metric's difference and the per-slice primary
  metrics (:func:`compare_scores`), which :func:`mlops_airflow.core.gate.decide` turns into a verdict;
* what each version relies on and whom it fails (:func:`assess_versions`): permutation importance and partial
  dependence (:mod:`mlops_airflow.core.explain`) and the spec's fairness criteria
  (:mod:`mlops_airflow.core.fairness`), both on the same rows;
* whether the champion itself breaks a fairness limit (:func:`champion_breach`), the candidate's calibration
  (:func:`evaluate`), and how all of it reads in the task log (:func:`describe`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mlops_airflow.core import explain, fairness
from mlops_airflow.core.errors import AssessmentError
from mlops_airflow.core.evaluation import Target, compute_metrics
from mlops_airflow.core.gate import breach_text, champion_fairness_breaches, paired_bootstrap, slice_metrics
from mlops_airflow.core.metrics import finite_or_none
from mlops_airflow.core.registry import TAG_DAG_ID, TAG_RUN_ID
from mlops_airflow.core.spec import ModelSpec

#: The version tag that says which champion the version's gate judged it against.
TAG_JUDGED_AGAINST = "mlops.gate.champion_version"
#: Where the comparison is recorded in the CT run (JSON) and the folders of its figures.
COMPARISON_ARTIFACT = "evaluation/comparison.json"
EVALUATION_PLOTS = "evaluation"
EXPLAIN_PLOTS = "explain"


@dataclass(frozen=True)
class BaselineChoice:
    """The version the candidate is judged against (None: no baseline, a first run) and why."""

    version: str | None
    reason: str


def choose_baseline(
    champion_version: str | None, champion_tags: dict[str, str] | None, dag_id: str, run_id: str
) -> BaselineChoice:
    """Which version to judge the candidate against, from the current champion (proven servable).

    :param champion_version: the version holding ``champion``; None when no version holds it.
    :param champion_tags: its version tags.
    :param dag_id: this DAG run's DAG.
    :param run_id: this DAG run.
    """
    if champion_version is None:
        return BaselineChoice(None, "no champion yet: first run, absolute thresholds only")
    tags = champion_tags or {}
    if tags.get(TAG_DAG_ID) != dag_id or tags.get(TAG_RUN_ID) != run_id:
        return BaselineChoice(str(champion_version), f"champion v{champion_version}")
    earlier = (tags.get(TAG_JUDGED_AGAINST) or "").strip()
    if earlier in {"", "None"}:
        return BaselineChoice(
            None, f"this run's own v{champion_version} is champion and was judged against no champion (first run)"
        )
    return BaselineChoice(
        earlier, f"v{earlier}, which this run's own v{champion_version} (now champion) was judged against"
    )


@dataclass
class Scored:
    """One model on the evaluation rows: the logged model, its scores and its decision threshold."""

    model: Any
    score: np.ndarray
    threshold: float = 0.5


def compare_scores(
    spec: ModelSpec,
    y: np.ndarray,
    candidate: Scored,
    champion: Scored | None,
    slice_columns: dict[str, np.ndarray] | None = None,
    *,
    champion_version: str | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Every metric of both versions on the same rows, the paired bootstrap of the primary metric's difference
    and the per-slice primary metrics (the last two only with a champion).

    :param slice_columns: the values of each of the spec's slice columns on the rows.
    :param workers: threads of the bootstrap.
    :return: the evaluation's XCom (without the importance and fairness summary); raises
        :class:`~mlops_airflow.core.errors.AssessmentError` when the rows cannot be compared.
    """
    rows = len(y)
    if rows == 0:
        raise AssessmentError(f"{spec.name}: no evaluation rows to compare candidate and champion on")
    for who, scored in (("candidate", candidate), ("champion", champion)):
        if scored is not None and len(scored.score) != rows:
            raise AssessmentError(
                f"{spec.name}: the {who} scored {len(scored.score)} rows of the {rows} evaluation rows"
            )
    target = Target.of(spec)
    result: dict[str, Any] = {
        "primary_metric": spec.primary,
        "rows": rows,
        "candidate": compute_metrics(target, y, candidate.score, threshold=candidate.threshold),
        "candidate_threshold": candidate.threshold,
        "champion": None,
        "champion_version": None,
        "champion_threshold": None,
        "bootstrap": None,
        "slices": None,
    }
    if champion is None:
        return result
    thresholds = (candidate.threshold, champion.threshold)
    result["champion"] = compute_metrics(target, y, champion.score, threshold=champion.threshold)
    result["champion_version"] = champion_version
    result["champion_threshold"] = champion.threshold
    result["bootstrap"] = paired_bootstrap(
        y,
        candidate.score,
        champion.score,
        spec.primary,
        target=target,
        thresholds=thresholds,
        n_resamples=spec.gate.n_bootstrap,
        confidence=spec.gate.confidence,
        workers=workers,
    ).to_dict()
    if spec.slices:
        columns = slice_columns or {}
        missing = [c for c in spec.slices if c not in columns]
        if missing:
            raise AssessmentError(f"{spec.name}: the evaluation rows lack the slice column(s) {missing}")
        result["slices"] = slice_metrics(
            spec.primary,
            y,
            candidate.score,
            champion.score,
            {c: columns[c] for c in spec.slices},
            target=target,
            thresholds=thresholds,
        )
    return result


@dataclass
class Assessment:
    """Explanations and fairness of candidate and champion on the same evaluation rows.

    :param summary: the small part for XCom and the gate (importance change, fairness per criterion).
    :param artifacts: JSON artifacts for MLflow (path -> data), full importances and curves included.
    :param figures: plots for MLflow (file name -> figure).
    """

    summary: dict[str, Any]
    artifacts: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    markdown: str = ""


def assess_versions(
    spec: ModelSpec,
    rows: pd.DataFrame,
    y: np.ndarray,
    candidate: Scored,
    champion: Scored | None,
    recorded: explain.RecordedImportance | None = None,
) -> Assessment:
    """What each version relies on and whom it fails: importance (both), partial dependence (candidate) and
    every fairness criterion of the spec (both, on the same rows).

    :param recorded: the champion's importance at its registration
        (:func:`~mlops_airflow.core.explain.recorded_importance`); the importance change is against it, or
        against the champion on today's rows when there is none.
    """
    started = time.perf_counter()
    scores = explain.logged_model_scores
    importance, curves = explain.explain(spec, scores(spec, candidate.model), rows, threshold=candidate.threshold)
    champion_importance = None
    if champion is not None:
        champion_importance = explain.permutation_importances(
            spec, scores(spec, champion.model), rows, threshold=champion.threshold
        )
    at_registration = None if champion is None or recorded is None else recorded.importance
    change = explain.importance_change(importance, champion_importance, at_registration)
    note = "" if champion is None else recorded.note if recorded is not None else "not read"
    explain_seconds = time.perf_counter() - started

    started = time.perf_counter()
    fair_candidate = fairness.assess(spec, rows, y, candidate.score, threshold=candidate.threshold)
    fair_champion = (
        None if champion is None else fairness.assess(spec, rows, y, champion.score, threshold=champion.threshold)
    )
    compared = fairness.compare(fair_candidate, fair_champion)
    fairness_seconds = time.perf_counter() - started

    summary = {
        "importance": change,
        "importance_note": note,
        "fairness": compared,
        "champion_fairness_breaches": champion_fairness_breaches(compared),
        "explain_seconds": round(explain_seconds, 3),
        "fairness_seconds": round(fairness_seconds, 3),
    }
    artifacts: dict[str, Any] = {
        explain.IMPORTANCE_ARTIFACT: importance,
        "explain/partial_dependence_candidate.json": curves,
        "explain/importance_change.json": change,
    }
    figures = {
        "importance_candidate.png": explain.importance_figure(importance, "Permutation importance: candidate"),
        "partial_dependence_candidate.png": explain.partial_dependence_figure(spec, curves),
    }
    if champion_importance is not None:
        artifacts["explain/importance_champion.json"] = champion_importance
        figures["importance_champion.png"] = explain.importance_figure(
            champion_importance, "Permutation importance: champion"
        )
    if spec.fairness:
        artifacts["fairness/candidate.json"] = fair_candidate
        artifacts["fairness/champion.json"] = fair_champion
    return Assessment(summary, artifacts, figures, report_markdown(summary, spec.primary))


def report_markdown(summary: dict[str, Any], metric: str) -> str:
    """The gate report's sections on importance and fairness groups (from the evaluation's summary)."""
    importance = explain.change_markdown(summary.get("importance") or [], metric, summary.get("importance_note") or "")
    parts = [importance, fairness.groups_markdown(summary.get("fairness") or [])]
    return "\n".join(p for p in parts if p)


def champion_breach(result: dict[str, Any]) -> str | None:
    """The line recorded on the CT run when the champion itself breaks a fairness limit on the rows; None if
    it breaks none (or there is no champion)."""
    breaches = result.get("champion_fairness_breaches") or []
    return breach_text(breaches, result.get("champion_version")) if breaches else None


@dataclass
class Evaluation:
    """The whole comparison: its XCom, and what the CT run records beside it.

    :param result: the XCom (small: metrics, bootstrap, slices, importance change, fairness per criterion).
    :param artifacts: JSON artifacts (path in the run -> data) beside the result (:data:`COMPARISON_ARTIFACT`).
    :param figures: plots per artifact folder (folder -> file name -> figure).
    :param champion_breach: :func:`champion_breach` of the result.
    :param calibration: the candidate's calibration on the rows, what a label-free estimate of it can rest on
        (:func:`mlops_airflow.core.estimate.calibrate`); None for a regression model.
    """

    result: dict[str, Any]
    artifacts: dict[str, Any]
    figures: dict[str, dict[str, Figure]]
    champion_breach: str | None
    calibration: dict[str, Any] | None = None


def evaluate(
    spec: ModelSpec,
    rows: pd.DataFrame,
    y: np.ndarray,
    candidate: Scored,
    champion: Scored | None,
    *,
    champion_version: str | None = None,
    recorded: explain.RecordedImportance | None = None,
    workers: int = 1,
) -> Evaluation:
    """:func:`compare_scores` and :func:`assess_versions` of both versions on ``rows``, with their figures.

    :param y: the rows' encoded labels (:func:`~mlops_airflow.core.scoring.encode_labels`).
    :param champion_version: the baseline's version (:func:`choose_baseline`), with ``champion`` its scores.
    :param recorded: the baseline's importance at its registration.
    """
    from mlops_airflow.core.reports import metric_comparison_figure, roc_curve_figure

    slice_columns = {c: rows[c].to_numpy() for c in spec.slices if c in rows.columns}
    result = compare_scores(
        spec, y, candidate, champion, slice_columns, champion_version=champion_version, workers=workers
    )
    plots: dict[str, Figure] = {}
    if champion is not None and spec.is_classifier:
        plots["roc_candidate_vs_champion.png"] = roc_curve_figure(
            Target.of(spec), y, {"candidate": candidate.score, f"champion v{champion_version}": champion.score}
        )
    plots["metrics_candidate_vs_champion.png"] = metric_comparison_figure(result["candidate"], result["champion"])
    assessment = assess_versions(spec, rows, y, candidate, champion, recorded)
    result.update(assessment.summary)
    figures = {EVALUATION_PLOTS: plots, EXPLAIN_PLOTS: assessment.figures}
    calibration = None
    if spec.is_classifier:
        from mlops_airflow.core.estimate import calibrate

        calibration = calibrate(Target.of(spec), y, candidate.score).summary()
    return Evaluation(result, assessment.artifacts, figures, champion_breach(result), calibration)


def _value(value: Any) -> str:
    number = finite_or_none(value)
    return "undefined" if number is None else f"{number:.4g}"


def describe(result: dict[str, Any], baseline: BaselineChoice) -> list[str]:
    """A few lines for the task log: what was decided, on which figures."""
    metric = result["primary_metric"]
    champion = result.get("champion")
    lines = [
        f"baseline: {baseline.reason}",
        f"on the same {result['rows']} evaluation rows: candidate {metric} {result['candidate'].get(metric)}, "
        + (
            f"champion v{result['champion_version']} {champion.get(metric)}"
            if champion is not None
            else "champion none (first run)"
        ),
    ]
    boot = result.get("bootstrap")
    if boot:
        lines.append(
            f"candidate - champion on {metric}: {_value(boot['estimate'])}, {boot['confidence']:.0%} interval "
            f"[{_value(boot['lower'])}, {_value(boot['upper'])}] over {boot['n_resamples']} resamples"
        )
    fair = result.get("fairness") or []
    if fair:
        broken = [
            f"{c['metric']} of {c['attribute']}" for c in fair if (finite_or_none(c.get("value")) or 0) > c["max"]
        ]
        breaches = result.get("champion_fairness_breaches") or []
        lines.append(
            f"fairness: {len(fair)} criteria; candidate over a limit on {', '.join(broken) or 'none'}; "
            f"champion over a limit on {', '.join(b['limit'] for b in breaches) or 'none'}"
        )
    importance = result.get("importance") or []
    if importance:
        top = importance[0]
        where = "" if top.get("champion_rank") is None else f" (rank {top['champion_rank']} for the champion)"
        lines.append(f"importance: the candidate relies most on {top['feature']}{where}")
    return lines
