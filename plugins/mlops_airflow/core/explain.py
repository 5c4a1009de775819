"""What a model relies on: permutation importance and partial dependence on the evaluation rows.

Task-time module. Both explanations treat a model as a black box over its raw input (the columns of
:func:`~mlops_airflow.core.scoring.model_input`): a *score function* maps those rows to the score array of
:mod:`mlops_airflow.core.evaluation`. :func:`logged_model_scores` wraps a logged pyfunc model's answer and
:func:`pipeline_scores` a fitted training pipeline, so the importance is the logged model's, preprocessing
included, and is reported per raw feature (not per one-hot column).

* Permutation importance (as :func:`sklearn.inspection.permutation_importance`): the drop of the primary
  metric, oriented so that positive means "the model gets worse", when one feature's values are shuffled
  across rows; ``n_repeats`` shuffles give its spread. The shuffled copies are stacked and scored in a few
  large calls (at most :data:`STACK_ROWS` rows each) instead of one call per feature and repeat: a logged
  model's per-call cost (schema check, frame conversion, one OpenMP pass per tree) is paid a few times, not
  ``features x repeats`` times.
* Partial dependence (brute force, as scikit-learn's ``method="brute"``): the mean score when a feature is set
  to each value of a grid on every row, for the most important features.
* The importance change against the champion (:mod:`mlops_airflow.core.assessment` puts candidate and
  champion side by side, with fairness): its importance as its own CT run recorded it at registration
  (:func:`recorded_importance`) beside its importance on today's rows; the change is against the first, which
  concept drift cannot distort, or against the second, labelled, when nothing was recorded.

Cost is bounded: importance runs on at most :data:`MAX_ROWS` evaluation rows (a seeded sample), partial
dependence on at most :data:`PD_ROWS`; one call scores ``rows x (1 + features x repeats)`` rows, so the cost
does not grow with the evaluation set beyond the cap (docs/operations.md, "Explanations, fairness and the model
card").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mlops_airflow.core.evaluation import Target, metric_value
from mlops_airflow.core.metrics import finite_or_none, higher_is_better
from mlops_airflow.core.scoring import encode_labels, model_input, output_scores, predict_frame
from mlops_airflow.core.spec import ModelSpec

#: Evaluation rows permutation importance runs on at most (a seeded sample beyond it).
MAX_ROWS = 5_000
#: Shuffles per feature.
N_REPEATS = 5
#: Rows one stacked importance scoring call holds at most.
STACK_ROWS = 200_000
#: Features whose partial dependence is computed and plotted.
TOP_FEATURES = 3
#: Rows and grid points of a partial dependence curve.
PD_ROWS = 1_000
PD_GRID = 20

#: Where a CT run records its candidate's importance (for a registered version: its importance at registration).
IMPORTANCE_ARTIFACT = "explain/importance_candidate.json"
#: Labels of the champion's two importances in the report.
AT_REGISTRATION = "at registration"
ON_TODAYS_ROWS = "on today's rows"

ScoreFunction = Callable[[pd.DataFrame], np.ndarray]


def logged_model_scores(spec: ModelSpec, model: Any) -> ScoreFunction:
    """Scores of a logged pyfunc model for raw model-input rows (its answer read by ``output_scores``).

    Through :func:`~mlops_airflow.core.scoring.predict_frame`, as the gate scores: permutation importance calls
    it once per feature and repeat, and MLflow's value-by-value check of ``Any`` columns on every call made
    ``evaluate_vs_champion`` many times slower than the scoring it explains.
    """
    return lambda x: output_scores(predict_frame(model, model_input(spec, x)), spec)


def pipeline_scores(spec: ModelSpec, pipeline: Any, threshold: float = 0.5) -> ScoreFunction:
    """Scores of a fitted training pipeline for raw model-input rows (the same path as the logged model)."""
    from mlops_airflow.core.training import score_rows

    return lambda x: score_rows(spec, pipeline, x, threshold)


def _sample(frame: pd.DataFrame, cap: int, seed: int) -> pd.DataFrame:
    if len(frame) <= cap:
        return frame
    return frame.sample(n=cap, random_state=seed).sort_index()


def permutation_importances(
    spec: ModelSpec,
    score: ScoreFunction,
    rows: pd.DataFrame,
    *,
    threshold: float = 0.5,
    n_repeats: int = N_REPEATS,
    max_rows: int = MAX_ROWS,
    seed: int = 0,
) -> dict[str, Any]:
    """Permutation importance of every model input on the primary metric.

    :param score: a score function (:func:`logged_model_scores`, :func:`pipeline_scores`).
    :param rows: labelled raw rows (the evaluation rows of the snapshot).
    :param threshold: binary decision threshold, for threshold metrics.
    :return: ``{"metric", "baseline", "rows", "rows_total", "n_repeats", "features": [{"feature", "mean",
        "std", "repeats"}, ...]}``, most important first; ``mean`` is the metric's drop (oriented: positive
        means worse without the feature), ``std`` its spread over the repeats.
    """
    if n_repeats < 1 or max_rows < 1:
        raise ValueError(f"n_repeats ({n_repeats}) and max_rows ({max_rows}) must be at least 1")
    sample = _sample(rows, max_rows, seed)
    x = model_input(spec, sample).reset_index(drop=True)
    y = encode_labels(spec, sample[spec.label.name])
    target = Target.of(spec)
    metric = spec.primary
    sign = 1.0 if higher_is_better(metric) else -1.0

    def oriented(scores: np.ndarray) -> float:
        value = metric_value(metric, y, scores, target, threshold)
        return sign * value if np.isfinite(value) else float("nan")

    baseline = oriented(np.asarray(score(x)))
    # The shuffles, drawn as scikit-learn draws them: one seeded generator, one permutation of the row
    # positions per feature and repeat.
    rng = np.random.RandomState(seed)
    blocks = [(column, rng.permutation(len(x))) for column in x.columns for _ in range(n_repeats)]
    drops = np.empty((len(x.columns), n_repeats), dtype="float64")
    per_call = max(1, STACK_ROWS // max(len(x), 1))
    for first in range(0, len(blocks), per_call):
        chunk = blocks[first : first + per_call]
        stacked = {}
        for name in x.columns:
            values = x[name].to_numpy()
            tiled = np.concatenate([values] * len(chunk))
            for k, (column, order) in enumerate(chunk):
                if column == name:
                    tiled[k * len(x) : (k + 1) * len(x)] = values[order]
            stacked[name] = tiled
        scores = np.asarray(score(pd.DataFrame(stacked).astype(x.dtypes.to_dict())))
        for k in range(len(chunk)):
            index = first + k
            drops[index // n_repeats, index % n_repeats] = baseline - oriented(scores[k * len(x) : (k + 1) * len(x)])
    with np.errstate(invalid="ignore"):
        means, stds = drops.mean(axis=1), drops.std(axis=1)
    features = [
        {
            "feature": name,
            "mean": finite_or_none(means[i]),
            "std": finite_or_none(stds[i]),
            "repeats": [finite_or_none(v) for v in drops[i]],
        }
        for i, name in enumerate(x.columns)
    ]
    features.sort(key=lambda f: -(f["mean"] if f["mean"] is not None else float("-inf")))
    return {
        "metric": metric,
        "baseline": finite_or_none(sign * baseline),
        "rows": len(x),
        "rows_total": len(rows),
        "n_repeats": n_repeats,
        "features": features,
    }


def ranking(importance: dict[str, Any]) -> list[str]:
    """Feature names, most important first."""
    return [f["feature"] for f in importance["features"]]


def _grid(values: pd.Series, size: int) -> list[Any]:
    """Grid of a feature: quantiles of a numeric column, else its most frequent values."""
    present = values.dropna()
    if present.empty:
        return []
    if pd.api.types.is_numeric_dtype(present) and not pd.api.types.is_bool_dtype(present):
        uniques = np.unique(present.to_numpy(dtype="float64"))
        if len(uniques) <= size:
            return [float(v) for v in uniques]
        return [
            float(v) for v in np.unique(np.quantile(present.to_numpy(dtype="float64"), np.linspace(0.05, 0.95, size)))
        ]
    return list(present.value_counts().index[:size])


def partial_dependence(
    spec: ModelSpec,
    score: ScoreFunction,
    rows: pd.DataFrame,
    features: list[str],
    *,
    grid_size: int = PD_GRID,
    max_rows: int = PD_ROWS,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Mean score with each of ``features`` set to each grid value on every row (one scoring call per feature).

    :return: ``{feature: {"grid": [...], "mean": [...]}}``; ``mean`` is per grid value: binary P(positive),
        regression the prediction, multiclass one list of probabilities per class (``classes`` order).
    """
    x = model_input(spec, _sample(rows, max_rows, seed)).reset_index(drop=True)
    out: dict[str, dict[str, Any]] = {}
    for feature in features:
        grid = _grid(x[feature], grid_size)
        if not grid:
            continue
        stacked = pd.concat([x] * len(grid), ignore_index=True)
        stacked[feature] = np.repeat(np.asarray(grid, dtype=object), len(x))
        stacked = stacked.astype(x.dtypes.to_dict())
        scores = np.asarray(score(stacked), dtype="float64")
        means = scores.reshape(len(grid), len(x), *scores.shape[1:]).mean(axis=1)
        out[feature] = {
            "grid": [v.item() if isinstance(v, np.generic) else v for v in grid],
            "mean": [finite_or_none(v) for v in means] if means.ndim == 1 else means.round(6).tolist(),
        }
    return out


@dataclass(frozen=True)
class RecordedImportance:
    """The champion's importance as its own CT run recorded it when the version was registered.

    :param importance: the recorded :func:`permutation_importances` output; ``None`` when there is none.
    :param note: where it was read from, or why there is none (shown in the report).
    """

    version: str
    run_id: str | None
    importance: dict[str, Any] | None
    note: str


def recorded_importance(client: Any, spec: ModelSpec, version: str, run_id: str | None) -> RecordedImportance:
    """Read the importance the champion's CT run (``run_id``, the version's source run) logged at registration.

    Under concept drift the champion's importance on today's rows says what today's labels reward, not what
    the champion learned; the recorded one says what it relies on.
    """
    from mlops_airflow.core.ledger import read_json_artifact

    where = f"champion v{version}'s run {run_id}"
    if not run_id:
        return RecordedImportance(version, None, None, f"champion v{version} has no source MLflow run")
    data = read_json_artifact(client, run_id, IMPORTANCE_ARTIFACT)
    if data is None or not isinstance(data.get("features"), list):
        return RecordedImportance(version, run_id, None, f"{where} has no {IMPORTANCE_ARTIFACT}")
    if data.get("metric") != spec.primary:
        note = f"{where} recorded importance on {data.get('metric')!r}, not the primary metric {spec.primary!r}"
        return RecordedImportance(version, run_id, None, note)
    return RecordedImportance(version, run_id, data, f"read from {where} ({IMPORTANCE_ARTIFACT})")


def _ranked(importance: dict[str, Any] | None) -> dict[str, tuple[int, float | None]]:
    if importance is None:
        return {}
    return {f["feature"]: (i + 1, f["mean"]) for i, f in enumerate(importance["features"])}


def importance_change(
    candidate: dict[str, Any], champion: dict[str, Any] | None, recorded: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Per feature: the candidate's importance and rank, the champion's at its registration (``recorded``) and
    on today's rows (``champion``), and the change: candidate minus the champion at registration, or minus
    the champion on today's rows when nothing was recorded.

    :return: rows with ``champion``/``champion_rank`` and ``change`` against the reference named by
        ``basis`` (:data:`AT_REGISTRATION`, :data:`ON_TODAYS_ROWS`, ``None`` without a champion), beside
        ``champion_registered(_rank)`` and ``champion_today(_rank)``.
    """
    registered, today = _ranked(recorded), _ranked(champion)
    basis = AT_REGISTRATION if recorded is not None else ON_TODAYS_ROWS if champion is not None else None
    reference = registered if recorded is not None else today
    out = []
    for rank, f in enumerate(candidate["features"], start=1):
        name = f["feature"]
        other_rank, other_mean = reference.get(name, (None, None))
        change = None if other_mean is None or f["mean"] is None else f["mean"] - other_mean
        out.append(
            {
                "feature": name,
                "candidate": f["mean"],
                "candidate_std": f["std"],
                "candidate_rank": rank,
                "champion": other_mean,
                "champion_rank": other_rank,
                "basis": basis,
                "champion_registered": registered.get(name, (None, None))[1],
                "champion_registered_rank": registered.get(name, (None, None))[0],
                "champion_today": today.get(name, (None, None))[1],
                "champion_today_rank": today.get(name, (None, None))[0],
                "change": finite_or_none(change),
            }
        )
    return out


def change_markdown(change: list[dict[str, Any]], metric: str, note: str = "") -> str:
    """The importance table of the gate report: the champion at registration and on today's rows side by side,
    the change against the first (or the second when nothing was recorded); a new most important feature is
    called out.

    :param note: where the champion's importance at registration was read from, or why there is none.
    """
    if not change:
        return ""

    def fmt(value: Any, signed: bool = False) -> str:
        return "-" if value is None else (f"{value:+.4g}" if signed else f"{value:.4g}")

    lines = ["### Permutation importance (drop of `" + metric + "` when the feature is shuffled)", ""]
    top = change[0]
    basis = top.get("basis")
    if basis == ON_TODAYS_ROWS:
        lines += [
            f"Champion importance {AT_REGISTRATION} not recorded ({note or 'not read'}): the change is "
            f"against the champion's importance {ON_TODAYS_ROWS}.",
            "",
        ]
    elif basis == AT_REGISTRATION and note:
        lines += [f"Champion importance {AT_REGISTRATION}: {note}.", ""]
    if top["champion_rank"] not in (None, 1):
        lines += [
            f"**The candidate relies most on `{top['feature']}`, which ranked {top['champion_rank']} for the "
            f"champion {basis}: worth a look.**",
            "",
        ]
    lines += [
        f"| feature | candidate (± std) | rank | champion {AT_REGISTRATION} | rank | champion {ON_TODAYS_ROWS} | rank "
        f"| change vs champion {basis or '-'} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in change:
        lines.append(
            f"| {row['feature']} | {fmt(row['candidate'])} ± {fmt(row['candidate_std'])} | {row['candidate_rank']} "
            f"| {fmt(row.get('champion_registered'))} | {row.get('champion_registered_rank') or '-'} "
            f"| {fmt(row.get('champion_today'))} | {row.get('champion_today_rank') or '-'} "
            f"| {fmt(row['change'], signed=True)} |"
        )
    return "\n".join(lines) + "\n"


def importance_figure(importance: dict[str, Any], title: str = "Permutation importance") -> Figure:
    """Horizontal bars of the mean importance with the spread over repeats as error bars."""
    features = importance["features"][::-1]
    fig = Figure(figsize=(6, 0.4 * len(features) + 1.5))
    ax = fig.subplots()
    means = [f["mean"] or 0.0 for f in features]
    stds = [f["std"] or 0.0 for f in features]
    ax.barh([f["feature"] for f in features], means, xerr=stds, color="#5dade2")
    ax.axvline(0.0, color="grey", linewidth=1)
    ax.set_xlabel(f"drop of {importance['metric']} ({importance['n_repeats']} shuffles, {importance['rows']} rows)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def partial_dependence_figure(spec: ModelSpec, curves: dict[str, dict[str, Any]]) -> Figure:
    """One panel per feature: the mean score over its grid (one line per class for a multiclass model)."""
    n = max(1, len(curves))
    fig = Figure(figsize=(4.2 * n, 3.6))
    axes = np.atleast_1d(fig.subplots(1, n))
    label = {"binary": f"P({spec.positive_label})", "regression": "prediction"}.get(spec.kind, "P(class)")
    for ax, (feature, curve) in zip(axes, curves.items(), strict=False):
        grid = curve["grid"]
        positions = grid if all(isinstance(v, int | float) for v in grid) else list(range(len(grid)))
        means = np.asarray(curve["mean"], dtype="float64")
        if means.ndim == 1:
            ax.plot(positions, means, marker="o")
        else:
            for j, cls in enumerate(spec.classes):
                ax.plot(positions, means[:, j], marker="o", label=str(cls))
            ax.legend(fontsize="small")
        if positions is not grid:
            ax.set_xticks(positions, [str(v) for v in grid], rotation=45, ha="right")
        ax.set_xlabel(feature)
        ax.set_ylabel(label)
    fig.suptitle("Partial dependence")
    fig.tight_layout()
    return fig


def explain(
    spec: ModelSpec, score: ScoreFunction, rows: pd.DataFrame, *, threshold: float = 0.5, seed: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Importance and partial dependence of its :data:`TOP_FEATURES` most important features.

    :return: ``(importance, partial_dependence)``.
    """
    importance = permutation_importances(spec, score, rows, threshold=threshold, seed=seed)
    curves = partial_dependence(spec, score, rows, ranking(importance)[:TOP_FEATURES], seed=seed)
    return importance, curves
