"""Drift of recent production data against a reference frame, and the retrain request it leads to.

Pure logic, no Airflow and no MLflow. The ``monitor_<model>`` DAG compares the newest landed batches with
the champion's training reference (:func:`compute_drift`), compares the live metric with the champion's
evaluation metric when labels exist (:func:`performance_drop`), and asks :func:`retrain_decision` whether
to emit the retrain-request asset.

Per feature: numeric columns get the two-sample Kolmogorov-Smirnov test, the Wasserstein distance in units
of the reference standard deviation, and the population stability index (PSI) on reference-quantile bins;
categorical columns get a chi-squared test on the category counts, the Jensen-Shannon distance and the PSI
on categories. Nulls are dropped for numeric tests and form their own category for categorical ones.

This module is imported at DAG-parse time: numpy, pandas, scipy and matplotlib are imported inside the
functions that need them.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from mlops_airflow.core.metrics import finite_or_none, higher_is_better
from mlops_airflow.core.spec import DriftSpec

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

FeatureKind = Literal["numeric", "categorical"]
#: Category label of null values of a categorical feature.
MISSING = "<missing>"
#: Number of reference-quantile bins of the numeric PSI.
PSI_BINS = 10
#: Share given to a bin that is empty on one side, so that the PSI stays finite.
PSI_EPSILON = 1e-4


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature.

    :param statistic: KS statistic (numeric) or chi-squared statistic (categorical).
    :param distance: Wasserstein distance / reference std (numeric) or Jensen-Shannon distance (categorical).
    """

    name: str
    kind: FeatureKind
    statistic: float
    p_value: float
    distance: float
    psi: float
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("statistic", "p_value", "distance", "psi"):
            data[key] = finite_or_none(data[key])
        return data


@dataclass(frozen=True)
class DriftReport:
    """Drift of every monitored feature; ``should_retrain`` when ``drift_share >= spec.drift_share``."""

    features: list[FeatureDrift]
    drift_share: float
    drifted_features: list[str]
    should_retrain: bool
    n_reference: int
    n_current: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": [f.to_dict() for f in self.features],
            "drift_share": float(self.drift_share),
            "drifted_features": list(self.drifted_features),
            "should_retrain": bool(self.should_retrain),
            "n_reference": int(self.n_reference),
            "n_current": int(self.n_current),
        }

    def to_markdown(self) -> str:
        def fmt(value: float) -> str:
            return "-" if not math.isfinite(value) else f"{value:.3g}"

        verdict = "DRIFT: retrain requested" if self.should_retrain else "no actionable drift"
        lines = [
            f"### Data drift: **{verdict}**",
            "",
            f"- {len(self.drifted_features)}/{len(self.features)} features drifted "
            f"(share {self.drift_share:.0%}): {', '.join(self.drifted_features) or 'none'}",
            f"- Reference rows: {self.n_reference}; current rows: {self.n_current}",
            "",
            "| feature | kind | statistic | p-value | distance | PSI | drifted |",
            "|---|---|---|---|---|---|---|",
        ]
        for f in self.features:
            lines.append(
                f"| {f.name} | {f.kind} | {fmt(f.statistic)} | {fmt(f.p_value)} | {fmt(f.distance)} "
                f"| {fmt(f.psi)} | {'yes' if f.drifted else 'no'} |"
            )
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RetrainDecision:
    """Whether the monitor emits a retrain request, and why (or why not)."""

    request: bool
    reason: str
    in_cooldown: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _psi(ref_share: np.ndarray, cur_share: np.ndarray) -> float:
    import numpy as np

    p = np.where(ref_share > 0, ref_share, PSI_EPSILON)
    q = np.where(cur_share > 0, cur_share, PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def _numeric_drift(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float, float, float]:
    """(KS statistic, KS p-value, normalised Wasserstein distance, PSI) of two NaN-free samples."""
    import numpy as np
    from scipy import stats

    if len(ref) == 0 or len(cur) == 0:
        nan = float("nan")
        return nan, nan, nan, nan
    ks = stats.ks_2samp(ref, cur)
    std = float(np.std(ref))
    wasserstein = float(stats.wasserstein_distance(ref, cur))
    # Scale-free, so one threshold reads the same for age and income; a constant reference keeps raw units.
    distance = wasserstein / std if std > 0 else wasserstein
    # Reference-quantile bins: each holds ~10% of the reference. Ties (integer counts) merge edges.
    cuts = np.unique(np.quantile(ref, np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
    n_bins = len(cuts) + 1
    ref_share = np.bincount(np.searchsorted(cuts, ref, side="right"), minlength=n_bins) / len(ref)
    cur_share = np.bincount(np.searchsorted(cuts, cur, side="right"), minlength=n_bins) / len(cur)
    return float(ks.statistic), float(ks.pvalue), distance, _psi(ref_share, cur_share)


def _as_categories(values: pd.Series) -> pd.Series:
    """Each value as the category text the model encodes it by (an integer code with a gap on one side, read
    back as ``3.0``, is the same category as ``3`` on the other), nulls as :data:`MISSING`."""
    import numpy as np
    import pandas as pd

    from mlops_airflow.core.served_model import category_text

    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    texts = np.array([*(category_text(u) for u in uniques), MISSING], dtype=object)
    return pd.Series(texts[codes], index=values.index, dtype=object)


def _categorical_drift(ref: pd.Series, cur: pd.Series) -> tuple[float, float, float, float]:
    """(chi-squared statistic, p-value, Jensen-Shannon distance, PSI); unseen values are categories."""
    import numpy as np
    from scipy import stats
    from scipy.spatial.distance import jensenshannon

    ref_counts = _as_categories(ref).value_counts()
    cur_counts = _as_categories(cur).value_counts()
    categories = sorted(set(ref_counts.index) | set(cur_counts.index))
    table = np.array(
        [
            [ref_counts.get(c, 0) for c in categories],
            [cur_counts.get(c, 0) for c in categories],
        ],
        dtype="float64",
    )
    if table[0].sum() == 0 or table[1].sum() == 0:
        nan = float("nan")
        return nan, nan, nan, nan
    if len(categories) < 2:
        statistic, p_value = 0.0, 1.0  # one category on both sides: identical distributions
    else:
        chi2 = stats.chi2_contingency(table, correction=False)
        statistic, p_value = float(chi2.statistic), float(chi2.pvalue)
    ref_share, cur_share = table[0] / table[0].sum(), table[1] / table[1].sum()
    distance = float(jensenshannon(ref_share, cur_share, base=2))
    return statistic, p_value, distance, _psi(ref_share, cur_share)


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    spec: DriftSpec,
) -> DriftReport:
    """Drift of ``current`` (recent production data) against ``reference`` (the champion's training data).

    :param numeric: numeric feature columns (nulls dropped before testing).
    :param categorical: categorical feature columns (nulls and unseen values are categories of their own).
    :param spec: thresholds; a feature is drifted when ``p_value < spec.p_value`` AND
        ``psi >= spec.psi_threshold``.
    """
    import numpy as np

    columns = [*numeric, *categorical]
    missing = {
        name: [c for c in columns if c not in frame.columns]
        for name, frame in (("reference", reference), ("current", current))
    }
    if any(missing.values()):
        raise ValueError(f"compute_drift: missing columns {dict((k, v) for k, v in missing.items() if v)}")

    features: list[FeatureDrift] = []
    for column in columns:
        kind: FeatureKind = "numeric" if column in numeric else "categorical"
        if kind == "numeric":
            ref = reference[column].to_numpy(dtype="float64", na_value=np.nan)
            cur = current[column].to_numpy(dtype="float64", na_value=np.nan)
            stat, p_value, distance, psi = _numeric_drift(ref[~np.isnan(ref)], cur[~np.isnan(cur)])
        else:
            stat, p_value, distance, psi = _categorical_drift(reference[column], current[column])
        # Both conditions: with thousands of rows a test's p-value falls below any threshold on shifts far
        # too small to matter, and the PSI alone is noisy on small batches. Significant AND large = drift.
        drifted = bool(
            math.isfinite(p_value) and p_value < spec.p_value and math.isfinite(psi) and psi >= spec.psi_threshold
        )
        features.append(FeatureDrift(column, kind, stat, p_value, distance, psi, drifted))

    drifted_names = [f.name for f in features if f.drifted]
    share = len(drifted_names) / len(features) if features else 0.0
    return DriftReport(
        features=features,
        drift_share=share,
        drifted_features=drifted_names,
        should_retrain=bool(features) and share >= spec.drift_share,
        n_reference=len(reference),
        n_current=len(current),
    )


def performance_drop(
    champion_eval_metric: float, live_metric: float, metric: str, spec: DriftSpec
) -> tuple[bool, float]:
    """Whether the live metric fell more than ``spec.max_metric_drop`` below the reference.

    :param champion_eval_metric: the champion's metric on its evaluation set (when it was promoted).
    :param live_metric: the same metric on recently labelled production rows.
    :return: ``(dropped, drop)``; ``drop`` is oriented so that positive = worse (a fall of ROC AUC, a rise
        of RMSE). A NaN on either side is no evidence: ``(False, nan)``.
    """
    drop = float(champion_eval_metric - live_metric)
    drop = drop if higher_is_better(metric) else -drop
    if not math.isfinite(drop):
        return False, float("nan")
    return drop > spec.max_metric_drop, drop


def _utc(moment: dt.datetime) -> dt.datetime:
    # Airflow hands out aware UTC datetimes; a naive one is taken as UTC rather than failing the comparison.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def retrain_decision(
    report: DriftReport | None,
    perf_drop: bool | None,
    last_request_at: dt.datetime | None,
    now: dt.datetime,
    spec: DriftSpec,
    perf_delta: float | None = None,
) -> RetrainDecision:
    """Whether to request a retrain now.

    :param report: the drift report, or ``None`` when drift was not computed.
    :param perf_drop: the first element of :func:`performance_drop`, or ``None`` without labels.
    :param last_request_at: when the last retrain request was emitted, or ``None``.
    :param now: the current time (the run's logical date in Airflow).
    :param perf_delta: the oriented drop, for the reason.
    """
    causes = []
    if report is not None and report.should_retrain:
        causes.append(
            f"feature drift in {len(report.drifted_features)}/{len(report.features)} features "
            f"({report.drift_share:.0%} >= {spec.drift_share:.0%}): {', '.join(report.drifted_features)}"
        )
    if perf_drop:
        amount = "" if perf_delta is None else f" by {perf_delta:.4g}"
        causes.append(f"live metric dropped{amount} (> max_metric_drop {spec.max_metric_drop:g})")
    if not causes:
        parts = []
        if report is not None:
            parts.append(
                f"drift share {report.drift_share:.0%} < {spec.drift_share:.0%}"
                + (f" (drifted: {', '.join(report.drifted_features)})" if report.drifted_features else "")
            )
        if perf_drop is False:
            parts.append("live metric within max_metric_drop")
        return RetrainDecision(False, "no retrain: " + ("; ".join(parts) or "nothing to compare"), False)

    why = "; ".join(causes)
    if last_request_at is not None:
        elapsed = _utc(now) - _utc(last_request_at)
        cooldown = dt.timedelta(hours=spec.cooldown_hours)
        if elapsed < cooldown:
            # One request per cooldown: a retrain is already under way or just finished; repeating it
            # on the same drifted data would only queue identical runs.
            reason = (
                f"suppressed: within the {spec.cooldown_hours:g}h cooldown (last request "
                f"{_utc(last_request_at).isoformat()}, {elapsed.total_seconds() / 3600:.1f}h ago); "
                f"would request because {why}"
            )
            return RetrainDecision(False, reason, True)
    return RetrainDecision(True, f"retrain requested: {why}", False)


#: Plot names the monitor uses for its own figures: a feature of that name gets another file name.
OWN_PLOTS = ("labels_predicted", "labels_observed")


def plot_file_name(feature: str) -> str:
    """The file name of ``feature``'s drift plot: ``<feature>.png`` when the name is a plain file name, else a
    cleaned name with a hash of the exact name (``../x`` or ``a/b`` would leave the plot folder, and MLflow
    refuses such a path: the whole monitor run's upload would fail)."""
    import hashlib
    import re

    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", feature) and ".." not in feature and feature not in OWN_PLOTS:
        return f"{feature}.png"
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", feature).strip("_")[:60] or "feature"
    return f"feature-{cleaned}-{hashlib.sha256(feature.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}.png"


def plot_feature_drift(reference: pd.DataFrame, current: pd.DataFrame, feature: str, kind: str) -> Figure:
    """Reference vs current distribution of one feature, for the monitor's MLflow run.

    :param kind: ``numeric`` (overlaid normalised histograms) or ``categorical`` (category shares).
    """
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    if kind == "numeric":
        ref = reference[feature].to_numpy(dtype="float64", na_value=np.nan)
        cur = current[feature].to_numpy(dtype="float64", na_value=np.nan)
        ref, cur = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
        both = np.concatenate([ref, cur])
        if len(both) == 0:
            ax.text(0.5, 0.5, "no non-null values", ha="center", va="center", transform=ax.transAxes)
        else:
            # Shared edges so the two histograms are comparable bar for bar.
            edges = np.histogram_bin_edges(both, bins=30)
            ax.hist(ref, bins=edges.tolist(), density=True, alpha=0.5, label=f"reference (n={len(ref)})")
            ax.hist(cur, bins=edges.tolist(), density=True, alpha=0.5, label=f"current (n={len(cur)})")
        ax.set(xlabel=feature, ylabel="density")
    elif kind == "categorical":
        ref_share = _as_categories(reference[feature]).value_counts(normalize=True)
        cur_share = _as_categories(current[feature]).value_counts(normalize=True)
        categories = sorted(set(ref_share.index) | set(cur_share.index))
        x = np.arange(len(categories))
        ax.bar(x - 0.2, [ref_share.get(c, 0.0) for c in categories], width=0.4, label="reference")
        ax.bar(x + 0.2, [cur_share.get(c, 0.0) for c in categories], width=0.4, label="current")
        ax.set_xticks(x, categories, rotation=30, ha="right")
        ax.set(xlabel=feature, ylabel="share of rows")
    else:
        raise ValueError(f"kind must be 'numeric' or 'categorical', got {kind!r}")
    ax.set_title(f"Drift of {feature}")
    ax.legend()
    fig.tight_layout()
    return fig
