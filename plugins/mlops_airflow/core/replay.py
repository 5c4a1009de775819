"""Replay retrain policies over a model's own landed history, with the real pipeline functions.

``mlops replay <model>`` and the manual DAG ``replay_<model>`` call :func:`replay`. The history is a landing
folder of daily batches (one file per day, an ISO date ``YYYY-MM-DD`` in each name). Batches before the first
replayed day are the warm-up: a first-run CT on them makes the day-0 champion of every policy. Then, for each
replayed day, in date order:

1. the day's batch lands; its labels reach the CT landing zone ``label_delay_days`` days later;
2. the deployed model of each policy is scored on the day's labelled rows (the metric a user lives with);
3. each policy decides (:func:`mlops_airflow.core.retrain_policy.decide`) from the monitor's signals of the
   night: drift of the day's batch vs the champion's training rows (``compute_drift``), the observed drop of
   the champion's primary metric on the newest labelled batch (``performance_drop``), the label-free
   estimated drop when the policy uses one (``core.estimate``), whether its schedule fell due;
4. a CT run is the DAG's path: ``write_snapshot`` -> ``validate_snapshot`` (GX; a failing file is quarantined)
   -> ``fit_candidate`` / ``best_candidate`` / ``fit_final`` -> champion and candidate scored on the same
   newest rows -> ``paired_bootstrap`` + ``slice_metrics`` -> ``gate.decide`` -> promote when blessed.
   The ``ungated`` mode (a baseline) trains and promotes with no validation and no gate.

Isolation: no MLflow and no registry here. Every file is written under ``workdir`` (snapshots, batch store,
per-policy landing zones, quarantine), never under the model's storage prefix nor its landing zone, which is
only read. Deterministic: the same history, spec and policies give the same decisions (fixed seeds; models of
identical training windows are shared between policies because training is deterministic).
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlops_airflow.core.errors import MlopsError
from mlops_airflow.core.landing import DataError, LandedFile, LandingZone
from mlops_airflow.core.retrain_policy import CTRun, RetrainPolicy, Signals, decide, schedule_due
from mlops_airflow.core.spec import MAX_LABEL_DELAY_DAYS, ModelSpec

if TYPE_CHECKING:
    import pandas as pd

    from mlops_airflow.core.data import Snapshot
    from mlops_airflow.core.validation import FailedExpectation

Mode = Literal["never", "ungated", "gated"]
DATE_RE = re.compile(r"(\d{4}-\d{2}-\d{2})")
NIGHT = dt.time(2)  # a day's batch is acted on at 02:00 UTC the next day
ISOLATION = (
    "no MLflow run, registry or alias is read or written by the replay itself; every file it writes is under "
    "its own work folder; the landing zone is only read"
)


class ReplayError(MlopsError, ValueError):
    """A replay that cannot run: the message names the folder, file or policy and the rule."""


@dataclass(frozen=True)
class ReplayPolicy:
    """A retrain policy to replay: how models are made (``mode``) and when CT runs (``policy``)."""

    name: str
    label: str
    mode: Mode
    policy: RetrainPolicy


def named_policies(spec: ModelSpec) -> dict[str, ReplayPolicy]:
    """The policies ``--policy`` names: the spec's own and the usual alternatives, triggers from the spec."""
    own = RetrainPolicy.from_spec(spec)
    quiet: dict[str, Any] = {"on_drift": False, "max_observed_drop": None, "max_estimated_drop": None}
    nightly = "0 2 * * *"
    return {
        p.name: p
        for p in (
            ReplayPolicy("spec", f"the spec's policy ({own.describe()})", "gated", replace(own, name="spec")),
            ReplayPolicy("never", "never retrain", "never", replace(own, name="never", schedule=None, **quiet)),
            ReplayPolicy(
                "always",
                "nightly retrain, always promote (no validation, no gate)",
                "ungated",
                replace(own, name="always", schedule=nightly, **quiet),
            ),
            ReplayPolicy("nightly", "nightly CT + triggers", "gated", replace(own, name="nightly", schedule=nightly)),
            ReplayPolicy(
                "weekly_triggers",
                "weekly CT + triggers",
                "gated",
                replace(own, name="weekly_triggers", schedule="@weekly"),
            ),
            ReplayPolicy(
                "weekly", "weekly CT, no triggers", "gated", replace(own, name="weekly", schedule="@weekly", **quiet)
            ),
            ReplayPolicy(
                "triggers", "triggers only, no schedule", "gated", replace(own, name="triggers", schedule=None)
            ),
        )
    }


def resolve_policies(spec: ModelSpec, names: Sequence[str]) -> list[ReplayPolicy]:
    """The named policies, in the order given (duplicates once)."""
    known = named_policies(spec)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ReplayError(f"{spec.name}: unknown replay policy {unknown}; one of {sorted(known)}")
    if not names:
        raise ReplayError(f"{spec.name}: name at least one replay policy; one of {sorted(known)}")
    return [known[n] for n in dict.fromkeys(names)]


@dataclass(frozen=True)
class LandedBatch:
    """One daily batch of the history, as the landing zone listed it (and reads it)."""

    name: str
    date: dt.date
    path: Path
    file: LandedFile
    zone: LandingZone

    def read_bytes(self) -> bytes:
        """The batch's bytes through the landing zone's reader (roots, size cap, landing protocol)."""
        try:
            return self.zone.read_bytes(self.file)[0]
        except DataError as err:
            raise ReplayError(f"{err} (rule {err.rule})") from None

    def frame(self) -> pd.DataFrame:
        """The batch as a table, read as a CT run reads it."""
        try:
            return self.zone.read(self.file)[0].to_pandas()
        except DataError as err:
            raise ReplayError(f"{err} (rule {err.rule})") from None

    def copy_to(self, folder: Path, name: str | None = None) -> None:
        """Land the bytes read through the zone in ``folder`` (never a copy of what a symlink names)."""
        (folder / (name or self.name)).write_bytes(self.read_bytes())


def landed_batches(folder: Path, fmt: str, zone: LandingZone | None = None) -> list[LandedBatch]:
    """The daily batches of ``folder`` (files ending ``.<fmt>``) in date order; each name carries its date.

    Listed and later read by the landing zone's one reader (``zone``, default the folder with no landing
    protocol): a file or symlink leading outside the allowed landing roots is refused, naming it and the rule,
    as a CT run refuses it.
    """
    if not folder.is_dir():
        raise ReplayError(f"{folder}: the history folder does not exist")
    zone = zone if zone is not None else LandingZone(folder, fmt)
    try:
        files = zone.files()
    except DataError as err:
        raise ReplayError(f"{err} (rule {err.rule})") from None
    out = []
    for file in files:
        if not file.name.endswith(f".{fmt}"):
            continue
        path = Path(str(file.path))
        if file.refused:
            raise ReplayError(f"{file.refused} (rule landing_root)")
        match = DATE_RE.search(file.name)
        if match is None:
            raise ReplayError(f"{path}: a replayed batch needs an ISO date (YYYY-MM-DD) in its file name")
        try:
            day = dt.date.fromisoformat(match[1])
        except ValueError:
            raise ReplayError(f"{path}: {match[1]!r} in the file name is not a date") from None
        out.append(LandedBatch(file.name, day, path, file, zone))
    out.sort(key=lambda b: (b.date, b.name))
    dates = [b.date for b in out]
    dupes = sorted({d for d in dates if dates.count(d) > 1})
    if dupes:
        raise ReplayError(f"{folder}: one batch per day, found several on {[d.isoformat() for d in dupes]}")
    return out


@dataclass(frozen=True)
class Model:
    """A fitted model; identical training windows share one (training is deterministic)."""

    key: str
    pipeline: Any
    train: pd.DataFrame  # the drift reference of the monitor
    batches: tuple[str, ...]
    params: dict[str, Any]
    seconds: float  # what training it took (charged to each policy that trains it)


@dataclass
class PolicyState:
    """What one policy has deployed and done so far."""

    policy: ReplayPolicy
    landing: Path
    champion: Model
    champion_metric: float
    calibration: Any = None
    version: int = 1
    promoted_day: int = -1
    runs: list[CTRun] = field(default_factory=list)
    deployed_models: list[Model] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    quarantined: list[str] = field(default_factory=list)
    seconds: float = 0.0
    days: list[dict[str, Any]] = field(default_factory=list)

    def bump(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1


class Replay:
    """Replays policies over one history; models, validations and scores are cached across policies."""

    def __init__(
        self,
        spec: ModelSpec,
        history: list[LandedBatch],
        start: dt.date,
        end: dt.date,
        policies: list[ReplayPolicy],
        workdir: Path,
        *,
        label_delay_days: int = 0,
        truth: Callable[[LandedBatch], pd.DataFrame] | None = None,
    ) -> None:
        if not 0 <= label_delay_days <= MAX_LABEL_DELAY_DAYS:
            raise ReplayError(
                f"{spec.name}: label delay {label_delay_days} days is not between 0 and {MAX_LABEL_DELAY_DAYS}"
            )
        if end < start:
            raise ReplayError(f"{spec.name}: --to {end} is before --from {start}")
        self.spec = spec
        self.warmup = [b for b in history if b.date < start]
        self.replayed = [b for b in history if start <= b.date <= end]
        if not self.warmup:
            raise ReplayError(f"{spec.name}: no batch before {start} to train the first champion on")
        if not self.replayed:
            raise ReplayError(f"{spec.name}: no batch between {start} and {end}")
        self.policies = policies
        self.workdir = workdir
        self.label_delay = label_delay_days
        self.truth = truth
        self.models: dict[tuple[str, ...], Model] = {}
        self.file_failures: dict[str, list[FailedExpectation]] = {}
        self.file_seconds: dict[str, float] = {}
        self.validations = 0
        self.scores: dict[tuple[str, str], Any] = {}
        self.drifts: dict[tuple[str, str], Any] = {}
        self.frames: dict[str, pd.DataFrame] = {}
        self.snapshots = 0
        self.seconds: dict[str, float] = {}

    def timed(self, step: str, started: float) -> float:
        spent = time.perf_counter() - started
        self.seconds[step] = self.seconds.get(step, 0.0) + spent
        return spent

    # ---- data -------------------------------------------------------------------------------------
    def rows(self, batch: LandedBatch) -> pd.DataFrame:
        """The batch as landed (read once)."""
        if batch.name not in self.frames:
            self.frames[batch.name] = batch.frame()
        return self.frames[batch.name]

    def truth_rows(self, batch: LandedBatch) -> pd.DataFrame:
        """The labelled rows the deployed model is judged on (the landed rows unless a ``truth`` is given)."""
        frame = self.truth(batch) if self.truth is not None else self.rows(batch)
        return frame[frame[self.spec.label.name].notna()]

    def failed(self, name: str) -> bool:
        return bool(self.file_failures.get(name))

    # ---- CT building blocks -----------------------------------------------------------------------
    def snapshot(self, landing: Path, tag: str) -> Snapshot:
        from mlops_airflow.core.data import write_snapshot

        self.snapshots += 1
        snapshots = self.workdir / "snapshots"
        dest = snapshots / f"{landing.name}-{tag}-{self.snapshots}"
        return write_snapshot(self.spec, str(landing), dest, within=snapshots, store=self.workdir / "batches")

    def validate(self, snapshot: Snapshot) -> tuple[list[FailedExpectation], float]:
        """GX over the snapshot's batches; each landed file is validated once (its verdict cannot change).

        Returns the failures and the seconds the whole window's validation costs (each file at its measured cost).
        """
        from mlops_airflow.core.validation import validate_snapshot

        unseen = [b for b in snapshot.batches if b.name not in self.file_failures]
        if unseen:
            started = time.perf_counter()
            summary = validate_snapshot(self.spec, replace(snapshot, batches=unseen))
            spent = self.timed("validate (GX)", started)
            self.validations += 1
            for batch in unseen:
                self.file_failures[batch.name] = [f for f in summary.failed if f.file == batch.name]
                self.file_seconds[batch.name] = spent / len(unseen)
        failures = [f for b in snapshot.batches for f in self.file_failures[b.name]]
        return failures, sum(self.file_seconds[b.name] for b in snapshot.batches)

    def train(self, snapshot: Snapshot) -> Model:
        """Candidate search on the snapshot's training part, then a refit of the best candidate."""
        from mlops_airflow.core.config import candidate_grid
        from mlops_airflow.core.data import load_part
        from mlops_airflow.core.training import CandidateResult, best_candidate, fit_candidate, fit_final

        batches = tuple(b.name for b in snapshot.batches if b.part == "train")
        if batches not in self.models:
            started = time.perf_counter()
            train = load_part(snapshot, "train")
            results = []
            for index, params in enumerate(candidate_grid(self.spec)):
                _, (metrics, seconds, threshold) = fit_candidate(self.spec, params, train)
                results.append(CandidateResult(index, params, metrics, seconds, threshold))
            best = best_candidate(self.spec, results)
            pipeline = fit_final(self.spec, best.params, train)
            spent = self.timed("train (search + refit)", started)
            self.models[batches] = Model(f"m{len(self.models) + 1}", pipeline, train, batches, best.params, spent)
        return self.models[batches]

    def scored(self, model: Model, batch: LandedBatch, rows: pd.DataFrame) -> Any:
        from mlops_airflow.core.training import score_rows

        key = (model.key, batch.name)
        if key not in self.scores:
            self.scores[key] = score_rows(self.spec, model.pipeline, rows)
        return self.scores[key]

    def metric(self, model: Model, batch: LandedBatch) -> float:
        """The primary metric of ``model`` on the batch's labelled rows (what the business experiences)."""
        from mlops_airflow.core.evaluation import Target, metric_value
        from mlops_airflow.core.scoring import encode_labels

        rows = self.truth_rows(batch)
        y = encode_labels(self.spec, rows[self.spec.label.name])
        return metric_value(self.spec.primary, y, self.scored(model, batch, rows), Target.of(self.spec))

    def gate(self, candidate: Model, champion: Model, snapshot: Snapshot, seed: int) -> tuple[bool, float, str]:
        """Candidate and champion on the same newest rows; returns (blessed, candidate metric, reason)."""
        from mlops_airflow.core.data import load_part
        from mlops_airflow.core.evaluation import Target, compute_metrics
        from mlops_airflow.core.gate import decide as gate_decide
        from mlops_airflow.core.gate import paired_bootstrap, slice_metrics
        from mlops_airflow.core.scoring import encode_labels
        from mlops_airflow.core.training import score_rows

        spec = self.spec
        rows = load_part(snapshot, "eval")
        target = Target.of(spec)
        y = encode_labels(spec, rows[spec.label.name])
        cand = score_rows(spec, candidate.pipeline, rows)
        champ = score_rows(spec, champion.pipeline, rows)
        metric = spec.primary
        boot = paired_bootstrap(
            y,
            cand,
            champ,
            metric,
            target=target,
            n_resamples=spec.gate.n_bootstrap,
            confidence=spec.gate.confidence,
            seed=seed,
        )
        columns = {c: rows[c].to_numpy() for c in spec.slices}
        slices = slice_metrics(metric, y, cand, champ, columns, target=target)
        cand_metrics = compute_metrics(target, y, cand)
        decision = gate_decide(
            spec.gate,
            primary_metric=metric,
            candidate=cand_metrics,
            champion=compute_metrics(target, y, champ),
            bootstrap=boot,
            slices=slices,
            champion_version=champion.key,
        )
        return decision.blessed, cand_metrics[metric], decision.reason

    def calibration(self, model: Model, snapshot: Snapshot) -> Any:
        """The label-free estimator's calibration of ``model`` on the snapshot's evaluation rows."""
        from mlops_airflow.core.data import load_part
        from mlops_airflow.core.monitoring import champion_calibration
        from mlops_airflow.core.training import score_rows

        rows = load_part(snapshot, "eval")
        return champion_calibration(self.spec, rows[self.spec.label.name], score_rows(self.spec, model.pipeline, rows))

    # ---- the loop ---------------------------------------------------------------------------------
    def quarantine(self, state_name: str, landing: Path, failed: list[FailedExpectation]) -> list[str]:
        bad = sorted({f.file for f in failed if (landing / f.file).exists()})
        for name in bad:  # the runbook: quarantine the file, the next run trains without it
            (landing / name).replace(self.workdir / "quarantine" / f"{state_name}-{name}")
        return bad

    def initial_champion(self) -> tuple[Model, float, Any]:
        """The warm-up CT run (first-run policy) on the batches before the first replayed day."""
        from mlops_airflow.core.data import load_part
        from mlops_airflow.core.evaluation import Target, compute_metrics
        from mlops_airflow.core.gate import decide as gate_decide
        from mlops_airflow.core.scoring import encode_labels
        from mlops_airflow.core.training import score_rows

        landing = self.workdir / "landing" / "warmup"
        landing.mkdir(parents=True)
        for batch in self.warmup:
            batch.copy_to(landing)
        snapshot = self.snapshot(landing, "warmup")
        failed, _ = self.validate(snapshot)
        if failed:
            self.quarantine("warmup", landing, failed)
            snapshot = self.snapshot(landing, "warmup")
            failed, _ = self.validate(snapshot)
            if failed:
                raise ReplayError(f"{self.spec.name}: the warm-up batches fail validation: {failed[0]}")
        model = self.train(snapshot)
        rows = load_part(snapshot, "eval")
        y = encode_labels(self.spec, rows[self.spec.label.name])
        metrics = compute_metrics(Target.of(self.spec), y, score_rows(self.spec, model.pipeline, rows))
        decision = gate_decide(
            self.spec.gate, primary_metric=self.spec.primary, candidate=metrics, champion=None, bootstrap=None
        )
        if not decision.blessed:
            raise ReplayError(f"{self.spec.name}: the warm-up model is not blessed: {decision.reason}")
        needs_estimate = any(p.policy.max_estimated_drop is not None for p in self.policies)
        calibration = self.calibration(model, snapshot) if needs_estimate else None
        return model, metrics[self.spec.primary], calibration

    def promote(self, state: PolicyState, model: Model, metric: float, day: int, calibration: Any) -> None:
        state.champion, state.champion_metric, state.calibration = model, metric, calibration
        state.version += 1
        state.promoted_day = day
        state.deployed_models.append(model)
        state.bump("promotions")

    def ct_run(self, state: PolicyState, day: int, trigger: str) -> str:
        """One CT run of the policy on its landing zone as it is tonight; returns what happened."""
        state.bump("ct_runs")
        state.bump(f"ct_runs_{'schedule' if trigger == 'schedule' else 'triggered'}")
        started = time.perf_counter()
        snapshot = self.snapshot(state.landing, f"{day:04d}")
        state.seconds += time.perf_counter() - started
        if state.policy.mode == "ungated":
            model = self.train(snapshot)
            state.seconds += model.seconds
            state.bump("models_trained")
            self.validate(snapshot)  # the verdicts only count corrupt batches served; not part of the run
            self.promote(state, model, float("nan"), day, None)
            return f"{trigger}: promoted v{state.version} unchecked"
        failed, validation_seconds = self.validate(snapshot)
        state.seconds += validation_seconds
        if failed:
            bad = self.quarantine(state.policy.name, state.landing, failed)
            state.quarantined += bad
            state.bump("rejected_by_validation")
            return f"{trigger} CT: data rejected, quarantined {', '.join(bad)}"
        model = self.train(snapshot)
        state.seconds += model.seconds
        state.bump("models_trained")
        started = time.perf_counter()
        blessed, metric, reason = self.gate(model, state.champion, snapshot, seed=day)
        calibration = None
        if blessed and state.policy.policy.max_estimated_drop is not None:
            calibration = self.calibration(model, snapshot)
        state.seconds += self.timed("gate (score + bootstrap)", started)
        if not blessed:
            state.bump("gate_rejections")
            return f"{trigger} CT: not promoted: {reason[:160]}"
        self.promote(state, model, metric, day, calibration)
        return f"{trigger} CT: promoted v{state.version}"

    def signals(self, state: PolicyState, index: int, now: dt.datetime, since: dt.datetime) -> Signals:
        """The monitor of the night: drift of the day's batch, observed and estimated drop of the champion."""
        from mlops_airflow.core.drift import compute_drift, performance_drop

        spec, policy, champion = self.spec, state.policy.policy, state.champion
        batch = self.replayed[index]
        s: dict[str, Any] = {"metric": spec.primary, "scheduled": schedule_due(policy.schedule, since, now)}
        if policy.on_drift:
            key = (champion.key, batch.name)
            if key not in self.drifts:
                started = time.perf_counter()
                self.drifts[key] = compute_drift(
                    champion.train, self.rows(batch), spec.numeric_features, spec.drift_categories, spec.drift
                )
                self.timed("monitor (drift)", started)
            report = self.drifts[key]
            s |= {
                "drift_share": report.drift_share,
                "drift_threshold": spec.drift.drift_share,
                "drift_retrain": report.should_retrain,
                "drifted_features": tuple(report.drifted_features),
            }
        labelled = index - self.label_delay
        reference = state.champion_metric  # NaN for a model promoted unchecked: nothing to compare with
        if policy.max_observed_drop is not None and labelled >= 0 and reference == reference:
            live = self.metric(champion, self.replayed[labelled])
            _, delta = performance_drop(state.champion_metric, live, spec.primary, spec.drift)
            s["observed_drop"] = delta
        if policy.max_estimated_drop is not None and state.calibration is not None:
            from mlops_airflow.core.monitoring import estimate_batches, oriented_drop

            rows = self.rows(batch)
            found = estimate_batches(
                spec, state.calibration, [("landing zone", batch.name, self.scored(champion, batch, rows), None)], 0.5
            )[0].estimate
            if found.value is not None:
                s["estimated_drop"] = oriented_drop(spec.primary, state.champion_metric, found.value)
        return Signals(**s)

    def now(self, batch: LandedBatch) -> dt.datetime:
        return dt.datetime.combine(batch.date + dt.timedelta(days=1), NIGHT, tzinfo=dt.UTC)

    def act(self, state: PolicyState, index: int) -> dict[str, Any]:
        batch = self.replayed[index]
        now = self.now(batch)
        previous = self.now(self.replayed[index - 1]) if index else now - dt.timedelta(days=1)
        if state.policy.mode == "never":
            return {"decision": "never retrains", "trigger": None, "ct": ""}
        started = time.perf_counter()
        signals = self.signals(state, index, now, previous)
        decision = decide(state.policy.policy, state.runs, signals, now)
        state.seconds += time.perf_counter() - started
        out = {"decision": decision.reason, "trigger": decision.trigger, "ct": ""}
        if decision.retrain and decision.trigger is not None:
            state.runs.append(CTRun(now, decision.trigger))
            out["ct"] = self.ct_run(state, index, decision.trigger)
        return out

    def record(self, state: PolicyState, index: int) -> None:
        """Score today's deployed model; then let the policy act for tomorrow."""
        batch = self.replayed[index]
        model = state.champion
        row: dict[str, Any] = {
            "day": index,
            "date": batch.date.isoformat(),
            "batch": batch.name,
            "metric": self.spec.primary,
            "value": round(self.metric(model, batch), 5),
            "version": state.version,
            "model": model.key,
            "model_age_days": index - state.promoted_day,
            "failed_batches_in_model": [b for b in model.batches if self.failed(b)],
        }
        row |= self.act(state, index)
        state.days.append(row)

    def land_labels(self, state: PolicyState, index: int) -> None:
        """The batch whose labels arrive tonight reaches the policy's CT landing zone."""
        arrived = index - self.label_delay
        if arrived >= 0:
            self.replayed[arrived].copy_to(state.landing)

    def run(self) -> dict[str, Any]:
        initial, metric, calibration = self.initial_champion()
        (self.workdir / "quarantine").mkdir(parents=True, exist_ok=True)
        states = []
        for policy in self.policies:
            landing = self.workdir / "landing" / policy.name
            shutil.copytree(self.workdir / "landing" / "warmup", landing)
            states.append(PolicyState(policy, landing, initial, metric, calibration))
        for index in range(len(self.replayed)):
            for state in states:
                self.land_labels(state, index)
                self.record(state, index)
            shutil.rmtree(self.workdir / "snapshots", ignore_errors=True)
        return {s.policy.name: self.summarize(s) for s in states}

    def summarize(self, state: PolicyState) -> dict[str, Any]:
        values = [r["value"] for r in state.days]
        defined = [v for v in values if v == v]
        bound = self.spec.gate.thresholds.get(self.spec.primary)
        below: int | None = None
        if bound is not None and (bound.min is not None or bound.max is not None):
            below = sum(
                1
                for v in defined
                if (bound.min is not None and v < bound.min) or (bound.max is not None and v > bound.max)
            )
        corrupt = sorted({b for m in state.deployed_models for b in m.batches if self.failed(b)})
        from mlops_airflow.core.metrics import higher_is_better

        worst = (min(defined) if higher_is_better(self.spec.primary) else max(defined)) if defined else None
        return {
            "label": state.policy.label,
            "mode": state.policy.mode,
            "policy": state.policy.policy.describe() if state.policy.mode != "never" else "never retrains",
            "metric": self.spec.primary,
            "mean": round(sum(defined) / len(defined), 4) if defined else None,
            "worst": None if worst is None else round(worst, 4),
            "days_below_gate_threshold": below,
            "ct_runs": state.counts.get("ct_runs", 0),
            "ct_runs_schedule": state.counts.get("ct_runs_schedule", 0),
            "ct_runs_triggered": state.counts.get("ct_runs_triggered", 0),
            "models_trained": state.counts.get("models_trained", 0),
            "rejected_by_validation": state.counts.get("rejected_by_validation", 0),
            "gate_rejections": state.counts.get("gate_rejections", 0),
            "promotions": state.counts.get("promotions", 0),
            "compute_seconds": round(state.seconds, 1),
            "corrupt_batches_served": corrupt,
            "days_served_by_corrupt_model": sum(bool(r["failed_batches_in_model"]) for r in state.days),
            "quarantined": state.quarantined,
            "retrain_requests": [
                {"day": r["day"], "date": r["date"], "trigger": r["trigger"]} for r in state.days if r["trigger"]
            ],
            "days": state.days,
        }


def replay(
    spec: ModelSpec,
    history: Path,
    start: dt.date,
    end: dt.date,
    policies: Sequence[str] | Sequence[ReplayPolicy],
    workdir: Path,
    *,
    label_delay_days: int = 0,
    truth: Callable[[LandedBatch], pd.DataFrame] | None = None,
    keep_work: bool = False,
) -> dict[str, Any]:
    """Replay ``policies`` (names or :class:`ReplayPolicy`) over the batches of ``history`` dated ``start`` to
    ``end``; the batches before ``start`` are the warm-up. Writes only under ``workdir`` (removed unless
    ``keep_work``); returns the JSON-ready report (see :func:`write_report`)."""
    import logging
    import os

    from threadpoolctl import threadpool_limits

    resolved = [p if isinstance(p, ReplayPolicy) else None for p in policies]
    chosen = (
        [p for p in resolved if p is not None] if all(resolved) else resolve_policies(spec, [str(p) for p in policies])
    )
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    work = workdir / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    started = time.perf_counter()
    batches = landed_batches(history, spec.source.format, LandingZone.of(spec, history))
    # The limit below applies to the thread pools already loaded: load the estimator's (scikit-learn's OpenMP
    # runtime) first. Loaded later, it kept its 2 threads, and on a busy 2-core machine a demo fit took 14.6 s
    # instead of 1.1 s (spinning threads); the fitted models are the same.
    from mlops_airflow.core.training import estimator_class

    estimator_class(spec)
    try:
        # One OpenMP thread: on small windows HistGradientBoosting is much faster than with contending threads.
        with threadpool_limits(1):
            run = Replay(spec, batches, start, end, chosen, work, label_delay_days=label_delay_days, truth=truth)
            result = run.run()
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "model": spec.name,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "history": str(history),
        "warmup_batches": len(run.warmup),
        "days": len(run.replayed),
        "label_delay_days": label_delay_days,
        "metric": spec.primary,
        "gate_threshold": _threshold_text(spec),
        "gate_threshold_value": _threshold_value(spec),
        "isolation": ISOLATION,
        "workdir": str(work),
        "policies": result,
        "distinct_models_trained": len(run.models),
        "validate_snapshot_calls": run.validations,
        "files_validated": len(run.file_failures),
        "seconds_by_step": {k: round(v, 1) for k, v in run.seconds.items()},
        "replay_seconds": round(time.perf_counter() - started, 1),
    }


def _threshold_value(spec: ModelSpec) -> float | None:
    bound = spec.gate.thresholds.get(spec.primary)
    if bound is None:
        return None
    return bound.min if bound.min is not None else bound.max


def _threshold_text(spec: ModelSpec) -> str | None:
    bound = spec.gate.thresholds.get(spec.primary)
    if bound is None:
        return None
    parts = [f">= {bound.min:g}" if bound.min is not None else "", f"<= {bound.max:g}" if bound.max is not None else ""]
    return " and ".join(p for p in parts if p) or None


# ---- the report -----------------------------------------------------------------------------------------
def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per policy: the numbers of the report's table."""
    metric = result["metric"]
    rows = []
    for name, p in result["policies"].items():
        rows.append(
            {
                "policy": name,
                f"mean {metric}": _fmt(p["mean"]),
                f"worst {metric}": _fmt(p["worst"]),
                "days below gate threshold": "n/a"
                if p["days_below_gate_threshold"] is None
                else p["days_below_gate_threshold"],
                "CT runs (schedule/triggered)": f"{p['ct_runs']} ({p['ct_runs_schedule']}/{p['ct_runs_triggered']})",
                "models trained": p["models_trained"],
                "promotions": p["promotions"],
                "rejected (data/gate)": f"{p['rejected_by_validation']}/{p['gate_rejections']}",
                "compute s": p["compute_seconds"],
                "corrupt batches served": len(p["corrupt_batches_served"]),
            }
        )
    return rows


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(result: dict[str, Any], plot_name: str | None = "replay.png") -> str:
    """The report: what was replayed, the table, each policy's rule, the daily decisions."""
    metric = result["metric"]
    lines = [
        f"# Replay of `{result['model']}`: {result['from']} to {result['to']}",
        "",
        f"{result['days']} replayed day(s) after {result['warmup_batches']} warm-up batch(es) of "
        f"`{result['history']}`; "
        f"labels reach CT {result['label_delay_days']} day(s) after their batch. Deployed {metric} = the serving "
        f"model's {metric} on each day's labelled rows; gate threshold {result['gate_threshold'] or 'none'}.",
        "",
        f"Isolation: {result['isolation']}.",
        "",
        markdown_table(summary_rows(result)),
        "",
        "Corrupt batches served = batches that fail validation in the training window of any promoted model. "
        "Compute s = the seconds of the policy's own monitor decisions and CT runs (a model or a file verdict "
        "shared with another policy is charged at its measured cost).",
        "",
    ]
    if plot_name:
        lines += [f"![deployed {metric} per day]({plot_name})", ""]
    lines += ["## Policies", ""]
    lines += [f"- **{name}** ({p['mode']}): {p['policy']}" for name, p in result["policies"].items()]
    lines += ["", "## Decisions per day", ""]
    for name, p in result["policies"].items():
        lines += [f"### {name}", "", "| date | " + metric + " | version | decision | CT |", "|---|---|---|---|---|"]
        for r in p["days"]:
            lines.append(
                f"| {r['date']} | {_fmt(r['value'])} | v{r['version']} | {_cell(r['decision'])} | {_cell(r['ct'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path, marks: dict[int, str] | None = None, title: str | None = None) -> None:
    """Deployed metric per day and policy (a PNG); ``marks`` adds labelled vertical lines at days."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 5.5))
    ax = fig.subplots()
    for name, p in result["policies"].items():
        days = [r["day"] for r in p["days"]]
        ax.plot(days, [r["value"] for r in p["days"]], marker="o", markersize=3, label=p.get("label", name))
        promoted = [r["day"] for r in p["days"] if PROMOTED.search(r.get("ct", ""))]
        ax.plot(promoted, [p["days"][d]["value"] for d in promoted], linestyle="none", marker="^", color="grey")
    top = ax.get_ylim()[1]
    for day, text in (marks or {}).items():
        ax.axvline(day - 0.5, color="grey", linestyle="--", alpha=0.7)
        ax.text(day - 0.4, top, text, va="top", fontsize=8, rotation=90)
    threshold = result.get("gate_threshold_value")
    if threshold is not None:
        ax.axhline(threshold, color="red", linestyle=":", alpha=0.6)
    ax.set(xlabel=f"replayed day (0 = {result['from']})", ylabel=f"deployed {result['metric']} on the day's labels")
    ax.set_title(
        title or f"Replay of {result['model']}: deployed {result['metric']} per policy (^ = promoted that night)"
    )
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(result: dict[str, Any], out: Path, stem: str = "replay") -> dict[str, Path]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` in ``out``; returns their paths."""
    from mlops_airflow.core.encoding import dumps

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    paths["json"].write_text(dumps(result, indent=2) + "\n", encoding="utf-8")
    paths["md"].write_text(render_markdown(result, paths["png"].name), encoding="utf-8")
    plot(result, paths["png"])
    return paths


def decisions(result: dict[str, Any]) -> dict[str, list[tuple[Any, ...]]]:
    """The decisions of each policy, day by day, without timings: equal for equal history, spec and policies."""
    keys = ("date", "value", "version", "model", "decision", "trigger", "ct", "failed_batches_in_model")
    return {name: [tuple(str(r[k]) for k in keys) for r in p["days"]] for name, p in result["policies"].items()}


# ---- entry points (``mlops replay``, ``replay_<model>``) -------------------------------------------------
#: A night's CT text that promoted a model ("... CT: promoted v3", "...: promoted v1 unchecked"), never "not promoted".
PROMOTED = re.compile(r"(?:^|: )promoted v\d+")
EXPERIMENT_SUFFIX = "/replay"


def history_folder(spec: ModelSpec, history: str | None = None) -> Path:
    """The landing folder replayed: ``history`` or the spec's ``source.uri``; a local folder."""
    from mlops_airflow.core.settings import resolve_source_uri

    uri = history or resolve_source_uri(spec.source.uri)
    path = uri.removeprefix("file://")
    if "://" in path:
        raise ReplayError(f"{spec.name}: replay reads a local landing folder, not {uri}; copy the history locally")
    return Path(path)


def parse_date(text: str, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(text).strip())
    except ValueError:
        raise ReplayError(f"{what}: {text!r} is not a date (YYYY-MM-DD)") from None


def run_and_report(
    spec: ModelSpec,
    start: str | dt.date,
    end: str | dt.date,
    policies: Sequence[str],
    out: Path,
    *,
    label_delay_days: int | None = None,
    history: str | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Replay and write ``replay.{json,md,png}`` to ``out`` (its ``work/`` folder is removed afterwards).

    :param label_delay_days: default the spec's ``label.delay_days``.
    """
    first = start if isinstance(start, dt.date) else parse_date(start, "--from")
    last = end if isinstance(end, dt.date) else parse_date(end, "--to")
    delay = spec.label.delay_days if label_delay_days is None else label_delay_days
    result = replay(spec, history_folder(spec, history), first, last, list(policies), out, label_delay_days=delay)
    return result, write_report(result, out)


def log_report(client: Any, result: dict[str, Any], paths: dict[str, Path], tags: dict[str, str]) -> str:
    """One MLflow run in the experiment ``<model>/replay`` (never the model's own experiment, registry or
    aliases) with each policy's figures as metrics and the report as artifacts; reused when ``tags`` find one."""
    from mlops_airflow.core.tracking import experiment_id, find_run

    exp = experiment_id(client, f"{result['model']}{EXPERIMENT_SUFFIX}")
    found = find_run(client, exp, tags)
    run_id = found.info.run_id if found is not None else client.create_run(exp, tags=tags).info.run_id
    client.log_param(run_id, "from", result["from"])
    client.log_param(run_id, "to", result["to"])
    client.log_param(run_id, "policies", ",".join(result["policies"]))
    client.log_param(run_id, "label_delay_days", result["label_delay_days"])
    for name, p in result["policies"].items():
        for key in ("mean", "worst", "days_below_gate_threshold", "ct_runs", "models_trained", "compute_seconds"):
            if p[key] is not None:
                client.log_metric(run_id, f"{name}.{key}", float(p[key]))
        client.log_metric(run_id, f"{name}.corrupt_batches_served", float(len(p["corrupt_batches_served"])))
    for path in paths.values():
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return str(run_id)
