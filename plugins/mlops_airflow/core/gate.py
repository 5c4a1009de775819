"""The promotion rule: is the candidate provably no worse than the champion?

Pure logic, no Airflow and no MLflow. The evaluate task scores the candidate AND the current champion on the
same fresh evaluation rows; :func:`paired_bootstrap` turns the two score vectors into a confidence interval
of the difference, :func:`slice_metrics` into per-slice values, and :func:`decide` applies the model's
:class:`~mlops_airflow.core.spec.GateSpec` to all of it. The resulting :class:`GateDecision` (the
"blessing", as TFX calls it) is small and JSON-safe, so it travels through XCom and into MLflow tags.

Fairness limits are judged against the champion on the same rows: the less unfair of two models that both
break a limit may win (the violation is recorded), and a champion that breaks one is flagged in the decision.

Every difference is *oriented*: positive always means "the candidate is better", whatever the metric's
direction (``champion - candidate`` for lower-is-better metrics such as log loss or RMSE).

Metrics come from :mod:`mlops_airflow.core.evaluation` (one definition shared with training and the monitor);
scores are binary P(positive), multiclass ``(n, k)`` probabilities or regression predictions.

This module is imported at DAG-parse time: numpy, pandas and :mod:`mlops_airflow.core.evaluation` are
imported inside the functions that need them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mlops_airflow.core.metrics import finite_or_none, higher_is_better
from mlops_airflow.core.spec import GateSpec

if TYPE_CHECKING:
    import numpy as np

    from mlops_airflow.core.evaluation import Target

Verdict = Literal["pass", "fail", "skip"]
#: Category label of a slice for rows whose slice column is null.
MISSING = "<missing>"
#: MLflow run tag of a CT run whose champion breaks a fairness limit on the run's evaluation rows.
CHAMPION_BREACH_TAG = "mlops.champion_fairness_breach"
#: Upper bound on resamples x rows evaluated at once by the bootstrap: 8 MB per float64 matrix, a few tens of
#: MB at the peak (benchmarks/bootstrap.py); larger chunks are no faster.
_CHUNK_CELLS = 1_000_000


def _signed(value: float | None) -> str:
    """``+0.0123`` style; a bootstrap rebuilt from JSON may hold ``None`` where it had NaN."""
    value = finite_or_none(value)
    return "undefined" if value is None else f"{value:+.4g}"


def _orient(metric: str, candidate: Any, champion: Any) -> Any:
    """Candidate minus champion, sign-flipped for lower-is-better metrics (positive = candidate better)."""
    diff = candidate - champion
    return diff if higher_is_better(metric) else -diff


@dataclass(frozen=True)
class BootstrapResult:
    """Percentile interval of the oriented difference (candidate better = positive) on one metric.

    :param estimate: the oriented difference on all evaluation rows.
    :param n_resamples: resamples on which the metric was defined (and so entered the interval).
    """

    metric: str
    estimate: float
    lower: float
    upper: float
    confidence: float
    n_resamples: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return data | {k: finite_or_none(data[k]) for k in ("estimate", "lower", "upper")}


def paired_bootstrap(
    y_true: Any,
    score_candidate: Any,
    score_champion: Any,
    metric: str,
    *,
    target: Target,
    thresholds: tuple[float, float] = (0.5, 0.5),
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    workers: int = 1,
) -> BootstrapResult:
    """Paired bootstrap of the oriented metric difference between candidate and champion.

    Both models are scored on the SAME resampled rows in every resample, so the noise of the evaluation
    set cancels out of the difference: the interval is much tighter than two independent intervals.
    Every resample is a row of integer weights, and all resamples of a chunk are evaluated at once by
    :func:`~mlops_airflow.core.evaluation.weighted_metric` (no loop over resamples).

    :param y_true: encoded labels (:meth:`~mlops_airflow.core.evaluation.Target.encode`) or targets.
    :param score_candidate: candidate's scores: binary P(positive) ``(n,)``, multiclass ``(n, k)``
        probabilities in class order, regression predictions ``(n,)``.
    :param score_champion: champion's scores on the same rows.
    :param metric: a metric of the target's kind.
    :param target: the model's target.
    :param thresholds: binary decision thresholds of (candidate, champion), for threshold metrics.
    :param n_resamples: number of bootstrap resamples.
    :param confidence: two-sided coverage of the percentile interval.
    :param seed: seed of the resampling; the same inputs and seed give the same interval, whatever ``workers``.
    :param workers: threads evaluating chunks of resamples side by side.
    """
    import numpy as np

    from mlops_airflow.core.evaluation import as_encoded, as_scores, weighted_metric

    y = as_encoded(target, y_true)
    n_cand, n_champ = len(np.asarray(score_candidate)), len(np.asarray(score_champion))
    if not (len(y) == n_cand == n_champ):
        raise ValueError(f"length mismatch: y={len(y)}, candidate={n_cand}, champion={n_champ}")
    if len(y) == 0:
        raise ValueError("paired_bootstrap needs at least one evaluation row")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    cand, champ = as_scores(target, score_candidate, len(y)), as_scores(target, score_champion, len(y))
    t_cand, t_champ = thresholds

    def diff(w: np.ndarray) -> np.ndarray:
        return _orient(
            metric,
            weighted_metric(metric, y, cand, target, w, t_cand),
            weighted_metric(metric, y, champ, target, w, t_champ),
        )

    n = len(y)
    estimate = diff(np.ones((1, n)))[0]
    chunk = max(1, min(n_resamples, _CHUNK_CELLS // n))
    sizes = [min(chunk, n_resamples - start) for start in range(0, n_resamples, chunk)]

    def resampled(job: tuple[np.random.SeedSequence, int]) -> np.ndarray:
        seq, size = job
        idx = np.random.default_rng(seq).integers(0, n, size=(size, n))
        idx += n * np.arange(size)[:, None]
        # Row b of `w` counts how often each evaluation row was drawn in resample b (shared by both models).
        counts = np.bincount(idx.ravel(), minlength=size * n)
        del idx
        return diff(counts.reshape(size, n).astype("float64"))

    # Each chunk draws from its own child of the seed: the resamples do not depend on how many threads
    # evaluate them, and numpy releases the GIL in the sorting and sums that dominate.
    jobs = list(zip(np.random.SeedSequence(seed).spawn(len(sizes)), sizes, strict=True))
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            diffs = list(pool.map(resampled, jobs))
    else:
        diffs = [resampled(job) for job in jobs]
    all_diffs = np.concatenate(diffs)
    valid = all_diffs[np.isfinite(all_diffs)]  # undefined resamples (one class) carry no evidence
    alpha = (1.0 - confidence) / 2.0
    if len(valid):
        lower, upper = (float(v) for v in np.quantile(valid, [alpha, 1.0 - alpha]))
    else:
        lower = upper = float("nan")
    return BootstrapResult(metric, float(estimate), lower, upper, confidence, len(valid))


def slice_metrics(
    primary_metric: str,
    y_true: Any,
    score_candidate: Any,
    score_champion: Any | None,
    slice_columns: dict[str, Any],
    *,
    target: Target,
    thresholds: tuple[float, float] = (0.5, 0.5),
) -> dict[str, dict[str, Any]]:
    """Primary metric of both models on every category of every slice column.

    :param y_true: encoded labels or targets, as for :func:`paired_bootstrap`.
    :param slice_columns: column name -> its values on the evaluation rows (same order as ``y_true``).
    :param score_champion: ``None`` when there is no champion (its values are then ``None``).
    :param thresholds: binary decision thresholds of (candidate, champion).
    :return: ``{"column=value": {"n": rows, "candidate": metric, "champion": metric}}``; null values
        form the category ``<missing>``. Undefined metrics (one class in the slice) are ``None``.
    """
    import numpy as np
    import pandas as pd

    from mlops_airflow.core.evaluation import as_encoded, as_scores, metric_value

    y = as_encoded(target, y_true)
    cand = as_scores(target, score_candidate, len(y))
    champ = None if score_champion is None else as_scores(target, score_champion, len(y))
    out: dict[str, dict[str, Any]] = {}
    for column, values in slice_columns.items():
        series = pd.Series(np.asarray(values, dtype=object))
        if len(series) != len(y):
            raise ValueError(f"slice column {column!r} has {len(series)} values for {len(y)} rows")
        labels = series.where(series.notna(), MISSING).astype(str).to_numpy()
        for value in sorted(set(labels)):
            mask = labels == value
            # None, not NaN, for an undefined metric: this dict goes to XCom and MLflow as JSON.
            candidate = metric_value(primary_metric, y[mask], cand[mask], target, thresholds[0])
            champion = (
                None if champ is None else metric_value(primary_metric, y[mask], champ[mask], target, thresholds[1])
            )
            n, cand_value, champ_value = int(mask.sum()), finite_or_none(candidate), finite_or_none(champion)
            out[f"{column}={value}"] = {"n": n, "candidate": cand_value, "champion": champ_value}
    return out


@dataclass(frozen=True)
class GateCheck:
    """One check of the gate. ``value`` and ``bound`` are ``None`` when missing or not numeric."""

    name: str
    metric: str | None
    value: float | None
    bound: float | None
    verdict: Verdict
    detail: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["value"], data["bound"] = finite_or_none(self.value), finite_or_none(self.bound)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateCheck:
        value, bound = finite_or_none(data.get("value")), finite_or_none(data.get("bound"))
        return cls(data["name"], data.get("metric"), value, bound, data["verdict"], data.get("detail", ""))


@dataclass(frozen=True)
class GateDecision:
    """The blessing: whether the candidate may become champion, and every check that decided it."""

    blessed: bool
    checks: list[GateCheck] = field(default_factory=list)
    champion_version: str | None = None
    first_run: bool = False
    primary_metric: str = ""
    reason: str = ""
    #: Fairness limits the blessed candidate breaks, let through because the champion breaks them more on
    #: the same rows: ``{"limit", "metric", "attribute", "max", "candidate", "champion"}`` each.
    fairness_violations: list[dict[str, Any]] = field(default_factory=list)
    #: Fairness limits the champion breaks on the same evaluation rows (same keys), blessed or not.
    champion_fairness_breaches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[GateCheck]:
        return [c for c in self.checks if c.verdict == "fail"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"checks": [c.to_dict() for c in self.checks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateDecision:
        version = data.get("champion_version")
        return cls(
            blessed=bool(data["blessed"]),
            checks=[GateCheck.from_dict(c) for c in data.get("checks", [])],
            champion_version=None if version is None else str(version),  # registry versions are strings
            first_run=bool(data.get("first_run", False)),
            primary_metric=data.get("primary_metric", ""),
            reason=data.get("reason", ""),
            fairness_violations=list(data.get("fairness_violations") or []),
            champion_fairness_breaches=list(data.get("champion_fairness_breaches") or []),
        )

    def to_markdown(self) -> str:
        """A short report for the Airflow task log, MLflow and the PR-style review of a promotion."""

        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.4g}"

        verdict = "BLESSED" if self.blessed else "NOT BLESSED"
        against = "no champion (first run)" if self.first_run else "champion"
        if self.champion_version is not None:
            against = f"champion version {self.champion_version}"
        lines = [
            f"### Gate: **{verdict}**",
            "",
            f"- Compared against: {against}",
            f"- Primary metric: `{self.primary_metric}` (differences oriented: positive = candidate better)",
            f"- Reason: {self.reason}",
        ]
        lines += [
            f"- Fairness limit broken, less than the champion: {violation_text(v)}" for v in self.fairness_violations
        ]
        if self.champion_fairness_breaches:
            lines.append(
                f"- **Champion fairness breach**: {breach_text(self.champion_fairness_breaches, self.champion_version)}"
            )
        lines += [
            "",
            "| check | metric | value | bound | verdict | detail |",
            "|---|---|---|---|---|---|",
        ]
        for c in self.checks:
            detail = c.detail.replace("|", "\\|")
            lines.append(f"| {c.name} | {c.metric or '-'} | {fmt(c.value)} | {fmt(c.bound)} | {c.verdict} | {detail} |")
        return "\n".join(lines) + "\n"


def _check(
    name: str, metric: str | None, value: float | None, bound: float | None, ok: bool | None, detail: str
) -> GateCheck:
    """A :class:`GateCheck`; ``ok=None`` is a skip (reported, not gated)."""
    verdict: Verdict = "skip" if ok is None else "pass" if ok else "fail"
    return GateCheck(name, metric, value, bound, verdict, detail)


def _threshold_checks(gate: GateSpec, candidate: dict[str, float]) -> list[GateCheck]:
    checks = []
    for metric, bound in gate.thresholds.items():
        value = finite_or_none(candidate.get(metric))
        for kind, limit in (("min", bound.min), ("max", bound.max)):
            if limit is None:
                continue
            name = f"{metric} {'>=' if kind == 'min' else '<='} {limit:g}"
            if value is None:
                # Fail closed: a metric we cannot read proves nothing.
                checks.append(_check(name, metric, None, limit, False, f"{metric} is missing or NaN"))
                continue
            ok = value >= limit if kind == "min" else value <= limit
            detail = f"{metric} = {value:.4g} ({'within' if ok else 'outside'} the absolute {kind} {limit:g})"
            checks.append(_check(name, metric, value, limit, ok, detail))
    return checks


def _champion_checks(gate: GateSpec, metric: str, bootstrap: BootstrapResult | None) -> list[GateCheck]:
    margin = -gate.max_regression
    usable = bootstrap is not None and bootstrap.metric == metric
    lower = finite_or_none(bootstrap.lower) if bootstrap is not None and usable else None
    if bootstrap is None:
        detail = "no bootstrap interval"
    elif not usable:
        detail = f"bootstrap is on {bootstrap.metric!r}, not the primary metric {metric!r}"
    elif lower is None:
        detail = "bootstrap interval undefined (metric undefined on every resample)"
    else:
        detail = (
            f"{bootstrap.confidence:.0%} interval of candidate - champion [{lower:+.4g}, {_signed(bootstrap.upper)}]"
            f" (estimate {_signed(bootstrap.estimate)}, {bootstrap.n_resamples} resamples): lower bound "
            f"{'>' if lower > margin else '<='} -{gate.max_regression:g}"
        )
    checks = [_check("non_inferiority", metric, lower, margin, lower is not None and lower > margin, detail)]

    if gate.min_improvement is not None:
        # The paired point estimate: both models on the same rows, already oriented.
        estimate = finite_or_none(bootstrap.estimate) if bootstrap is not None and usable else None
        ok = estimate is not None and estimate >= gate.min_improvement
        detail = (
            "no paired estimate of the improvement"
            if estimate is None
            else f"improvement {estimate:+.4g} {'>=' if ok else '<'} required {gate.min_improvement:g}"
        )
        checks.append(_check("min_improvement", metric, estimate, gate.min_improvement, ok, detail))
    return checks


def _slice_checks(gate: GateSpec, metric: str, slices: dict[str, dict[str, Any]]) -> list[GateCheck]:
    checks = []
    bound = -gate.slice_max_regression
    for key in sorted(slices):
        entry = slices[key]
        n = int(entry.get("n", 0))
        cand, champ = finite_or_none(entry.get("candidate")), finite_or_none(entry.get("champion"))
        if n < gate.min_slice_size or cand is None or champ is None:
            # Too few rows, or one class in the slice (AUC undefined): reported, but evidence neither way.
            detail = (
                f"{n} rows < min_slice_size {gate.min_slice_size}: reported, not gated"
                if n < gate.min_slice_size
                else f"{n} rows: {metric} undefined (candidate={cand}, champion={champ}): not gated"
            )
            checks.append(_check(f"slice {key}", metric, None, bound, None, detail))
        else:
            delta = _orient(metric, cand, champ)
            detail = (
                f"{n} rows: candidate {cand:.4g} vs champion {champ:.4g}, "
                f"change {delta:+.4g} ({'>=' if delta >= bound else '<'} -{gate.slice_max_regression:g})"
            )
            checks.append(_check(f"slice {key}", metric, delta, bound, delta >= bound, detail))
    return checks


def fairness_limit(item: dict[str, Any]) -> str:
    """A criterion as the limit it sets, e.g. ``demographic_parity_difference(age_band) <= 0.1``."""
    return f"{item['metric']}({item['attribute']}) <= {float(item['max']):g}"


def _gap(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4g}"


def _limit_record(item: dict[str, Any]) -> dict[str, Any]:
    """Which limit, and both models' gaps on the same rows (JSON-safe)."""
    return {
        "limit": fairness_limit(item),
        "metric": item["metric"],
        "attribute": item["attribute"],
        "max": float(item["max"]),
        "candidate": finite_or_none(item.get("value")),
        "champion": finite_or_none(item.get("champion_value")),
    }


def champion_fairness_breaches(fairness: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The limits the champion breaks on the evaluation rows.

    :param fairness: :func:`mlops_airflow.core.fairness.compare` output.
    :return: ``{"limit", "metric", "attribute", "max", "candidate", "champion"}`` per limit broken.
    """
    breaches = []
    for item in fairness:
        champion = finite_or_none(item.get("champion_value"))
        if champion is not None and champion > float(item["max"]):
            breaches.append(_limit_record(item))
    return breaches


def breach_text(breaches: list[dict[str, Any]], champion_version: str | None) -> str:
    """One line naming the champion and every limit it breaks, with its gap and the candidate's."""
    who = "the champion" if champion_version is None else f"champion v{champion_version}"
    limits = "; ".join(f"{b['limit']}: gap {_gap(b['champion'])} (candidate {_gap(b['candidate'])})" for b in breaches)
    return f"{who} breaks fairness limit(s) on the newest evaluation rows: {limits}"


def violation_text(violation: dict[str, Any]) -> str:
    """A limit the blessed candidate breaks, with both gaps."""
    return (
        f"{violation['limit']}: candidate gap {_gap(violation['candidate'])}, champion gap "
        f"{_gap(violation['champion'])} on the same rows"
    )


def _fairness_check(item: dict[str, Any], metrics_ok: bool) -> GateCheck:
    """The candidate's gap between groups must not exceed ``max``, unless the champion's gap on the same rows
    is larger still and the candidate passes every metric check (``metrics_ok``)."""
    metric, attribute, bound = item["metric"], item["attribute"], float(item["max"])
    value = finite_or_none(item.get("value"))
    champion = finite_or_none(item.get("champion_value"))
    ok = value is not None and value <= bound  # fail closed: an undefined gap proves nothing
    detail = str(item.get("detail") or f"{metric} over {attribute!r} = {value}")
    if champion is not None:
        detail += f"; champion on the same rows {champion:.4g}"
    if value is not None and not ok and champion is not None and champion > value:
        # Both break the limit: refusing the less unfair one would keep the more unfair one serving.
        ok = metrics_ok
        detail += (
            "; over the limit, but the champion breaks it more and the candidate passes every metric check: "
            "blessed, violation recorded"
            if ok
            else "; the champion breaks it more, but the candidate fails a metric check"
        )
    return _check(f"fairness {fairness_limit(item)}", metric, value, bound, ok, detail)


def _metric_checks(
    gate: GateSpec,
    primary_metric: str,
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    bootstrap: BootstrapResult | None,
    slices: dict[str, dict[str, Any]] | None,
) -> tuple[list[GateCheck], list[GateCheck]]:
    """Absolute thresholds, and then the first-run policy or the comparison with the champion."""
    if champion is None:
        if gate.first_run_policy == "reject":
            detail = "no champion and first_run_policy is 'reject': a human promotes the first model"
        elif not gate.thresholds:
            # TFX rule: without a baseline and without thresholds nothing proves the model is any good.
            detail = "no champion and no absolute thresholds: nothing proves the model"
        else:
            detail = "no champion: first_run_policy 'absolute_only' blesses on the absolute thresholds alone"
        ok = gate.first_run_policy == "absolute_only" and bool(gate.thresholds)
        return _threshold_checks(gate, candidate), [_check("first_run", None, None, None, ok, detail)]
    comparison = _champion_checks(gate, primary_metric, bootstrap)
    if slices:
        comparison += _slice_checks(gate, primary_metric, slices)
    return _threshold_checks(gate, candidate), comparison


def decide(
    gate: GateSpec,
    *,
    primary_metric: str,
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    bootstrap: BootstrapResult | None,
    slices: dict[str, dict[str, Any]] | None = None,
    champion_version: str | None = None,
    fairness: list[dict[str, Any]] | None = None,
) -> GateDecision:
    """Apply the promotion rule. Blessed iff no check failed (skipped checks do not count).

    :param gate: the model's gate spec.
    :param primary_metric: the metric of the non-inferiority, improvement and slice checks.
    :param candidate: candidate metrics on the evaluation rows.
    :param champion: champion metrics on the SAME rows, or ``None`` when there is no champion yet (first
        run). With a champion, the comparison itself rests on the paired ``bootstrap``, not on these values.
    :param bootstrap: :func:`paired_bootstrap` result on ``primary_metric`` (``None`` fails the
        non-inferiority check when there is a champion).
    :param slices: :func:`slice_metrics` output; slices are gated only with a champion.
    :param champion_version: registry version of the champion, for the audit trail.
    :param fairness: :func:`mlops_airflow.core.fairness.compare` output: each criterion's candidate value,
        its ``max`` and the champion's value on the same rows. A candidate over ``max`` is not blessed (first
        run included), unless the champion is further over it on the same rows and the candidate passes every
        metric check: it is then blessed, the limit recorded in ``fairness_violations``. Every limit the
        champion breaks is recorded in ``champion_fairness_breaches``, whatever the verdict.
    """
    fairness = fairness or []
    thresholds, comparison = _metric_checks(gate, primary_metric, candidate, champion, bootstrap, slices)
    first_run = champion is None
    metrics_ok = not first_run and all(c.verdict != "fail" for c in thresholds + comparison)
    fair = [_fairness_check(item, metrics_ok) for item in fairness]
    checks = thresholds + fair + comparison
    violations = [
        _limit_record(item)
        for item, check in zip(fairness, fair, strict=True)
        if check.verdict == "pass" and check.value is not None and check.bound is not None and check.value > check.bound
    ]
    breaches = champion_fairness_breaches(fairness) if not first_run else []
    reason = _reason(checks, champion_version, first_run, len(fairness), violations)
    blessed = not any(c.verdict == "fail" for c in checks)
    return GateDecision(blessed, checks, champion_version, first_run, primary_metric, reason, violations, breaches)


def _reason(
    checks: list[GateCheck],
    champion_version: str | None,
    first_run: bool,
    n_fairness: int,
    violations: list[dict[str, Any]],
) -> str:
    failed = [c for c in checks if c.verdict == "fail"]
    if failed:
        return "not blessed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)
    if first_run:
        reason = f"blessed on first run: all {len(checks) - 1} absolute threshold checks pass"
        return reason + (f" (fairness criteria included: {n_fairness})" if n_fairness else "")
    gated = sum(c.verdict == "pass" for c in checks)
    skipped = sum(c.verdict == "skip" for c in checks)
    reason = f"blessed: no worse than champion version {champion_version} on {gated} checks" + (
        f" ({skipped} skipped)" if skipped else ""
    )
    if violations:
        reason += "; fairness limit broken, less than the champion: " + "; ".join(map(violation_text, violations))
    return reason
