"""Replay goals: what ``mlops replay`` costs over 90 days, how close cheap policies get to a daily-retrain oracle,
and how long a degraded champion serves before a retrain is requested when labels come 7 days late.

``uv run python benchmarks/replay_goals.py`` measures, every replay through :func:`mlops_airflow.core.replay.replay`
(the loop of ``mlops replay``; no Airflow, no MLflow), on the ``credit_default`` demo feed with the simulation
settings of ``benchmarks/closed_loop.py`` (600 rows a day, 14 warm-up batches, 2 candidates, 500 bootstrap
resamples, one OpenMP thread):

1. **cost**: 90 replayed days (closed_loop's feed: feature shift from day 10, concept change from day 20,
   corrupt batches on days 7 and 16) with closed_loop's five policies, in a child process under
   ``/usr/bin/time -v`` (wall time, peak RSS); goal <= 10 min on the 2-core machine. Its first 30 days must
   repeat ``benchmarks/results/closed_loop.json`` decision for decision (the replay is causal and deterministic).
2. **oracle**: on (a) closed_loop's 30-day scenario and (b) a gradual drift (feature shift and concept change
   both ramping from 0 on day 5 to 1 on day 35, 40 days, :func:`mlops_airflow.core.demo_data.shift_on`), the
   oracle (retrain every night, always promote) against gated policies combining a weekly schedule, drift,
   estimated-drop and observed-drop triggers, a minimum interval and a weekly cap. Goal: a policy within 0.5
   points (0.005) of the oracle's mean deployed ROC AUC with <= 33 % of the oracle's CT runs.
3. **delay**: labels reach CT 7 days late; a degradation starts on day 10 of a 30-day feed (concept change only,
   feature shift only, both together, and applicants pulled 80 % towards the population median with the concept
   unchanged: ``demo_data.generate_batch(toward_center=0.8)``, a covariate shift towards the decision boundary).
   Days from the degradation's first day to the first night a retrain is requested (a CT run starts; 0 = the
   night after the first degraded day), labels-only policy
   (``max_observed_drop``) against label-free estimate policies (``max_estimated_drop``). Goal: <= 2 days with
   the estimate, >= 7 labels-only.

Results: ``benchmarks/results/replay_goals.{json,md,png}``. Deterministic: fixed seeds; the decisions of each
replay are hashed into the JSON (same seed, same hashes). ``--goals cost,oracle,delay`` runs a subset (the
others are kept from the JSON); ``--markdown-only`` re-renders from the JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
HERE = Path(__file__).resolve().parent
for extra in (REPO / "plugins", HERE):
    if str(extra) not in sys.path:  # running without the package installed; closed_loop beside this file
        sys.path.insert(0, str(extra))

import closed_loop  # noqa: E402
from mlops_airflow.core import demo_data  # noqa: E402
from mlops_airflow.core.replay import LandedBatch, ReplayPolicy, decisions, replay  # noqa: E402
from mlops_airflow.core.retrain_policy import RetrainPolicy  # noqa: E402
from mlops_airflow.core.spec import ModelSpec  # noqa: E402

COST_GOAL_SECONDS = 600.0
ORACLE_GAP = 0.005
ORACLE_RUN_SHARE = 0.33
ESTIMATE_GOAL_DAYS = 2
LABELS_GOAL_DAYS = 7


@dataclass(frozen=True)
class Shift:
    """One shift of the feed: ``peak`` times :func:`demo_data.shift_on` (``shape``, ``start``, ``length``)."""

    peak: float = 0.0
    shape: str = "step"
    start: int = 0
    length: int = 14

    def on(self, day: int) -> float:
        if self.peak == 0.0:
            return 0.0
        return self.peak * demo_data.shift_on(day, shape=self.shape, start=self.start, length=self.length)


@dataclass(frozen=True)
class Scenario:
    """A simulated feed: day 0 is the first replayed day; ``warmup`` batches land before it."""

    name: str
    title: str
    days: int = 30
    feature: Shift = Shift(1.0, "step", 10)
    concept: Shift = Shift(1.0, "step", 20)
    center: Shift = Shift()  # ``toward_center``: applicants pulled towards the population median
    corrupt: dict[int, str] = field(default_factory=lambda: {7: "out_of_range", 16: "nulls_in_required"})
    label_delay_days: int = 0
    degradation_day: int | None = None
    seed: int = 42


def sim_config(scenario: Scenario) -> closed_loop.SimConfig:
    """closed_loop's simulation settings (rows, warm-up, window, search space, bootstrap) for the scenario."""
    return closed_loop.SimConfig(days=scenario.days, corrupt=scenario.corrupt, seed=scenario.seed)


def write_feed(scenario: Scenario, feed: Path) -> dict[str, Any]:
    """The feed as landed files; returns each file's clean rows (a corrupt day's applicants are real)."""
    config = sim_config(scenario)
    clean = {}
    for day in range(-config.warmup, scenario.days):
        kwargs = {
            "n_rows": config.rows,
            "seed": scenario.seed,
            "feature_shift": scenario.feature.on(day),
            "concept_shift": scenario.concept.on(day),
            "toward_center": scenario.center.on(day),
        }
        gen_day = day + config.warmup  # the generator seeds on a non-negative day index
        path = demo_data.write_batch(feed, gen_day, corrupt=scenario.corrupt.get(day), **kwargs)
        clean[path.name] = demo_data.generate_batch(gen_day, **kwargs)
    return clean


def weekly_cron(config: closed_loop.SimConfig) -> str:
    """A weekly schedule that falls due on replayed day 0, 7, 14, ... (as closed_loop's weekly policies)."""
    first_night = demo_data.DEFAULT_START + dt.timedelta(days=config.warmup + 1)
    return f"0 2 * * {(first_night.weekday() + 1) % 7}"  # cron counts Sunday as 0


def oracle_policies(spec: ModelSpec, config: closed_loop.SimConfig) -> list[ReplayPolicy]:
    """The oracle, the floor and the candidate policies of goal 2 (fixed before any result was seen)."""
    weekly = weekly_cron(config)
    quiet: dict[str, Any] = {"on_drift": False, "max_observed_drop": None, "max_estimated_drop": None}

    def policy(name: str, **overrides: Any) -> RetrainPolicy:
        return RetrainPolicy.from_spec(spec, name, **overrides)

    return [
        ReplayPolicy(
            "oracle",
            "oracle: nightly retrain, always promote",
            "ungated",
            policy("oracle", schedule="0 2 * * *", **quiet),
        ),
        ReplayPolicy("never", "never retrain", "never", policy("never", schedule=None, **quiet)),
        ReplayPolicy("weekly", "weekly CT", "gated", policy("weekly", schedule=weekly, **quiet)),
        ReplayPolicy(
            "weekly_drift", "weekly CT + drift + observed drop 0.05", "gated", policy("weekly_drift", schedule=weekly)
        ),
        ReplayPolicy(
            "weekly_drift_gap72",
            "weekly CT + drift + observed drop, min interval 72 h",
            "gated",
            policy("weekly_drift_gap72", schedule=weekly, min_interval_hours=72),
        ),
        ReplayPolicy(
            "weekly_estimate_gap48",
            "weekly CT + estimated drop 0.03 + observed drop, min interval 48 h",
            "gated",
            policy(
                "weekly_estimate_gap48", schedule=weekly, on_drift=False, max_estimated_drop=0.03, min_interval_hours=48
            ),
        ),
        ReplayPolicy(
            "weekly_all_gap72",
            "weekly CT + drift + estimated drop 0.03 + observed drop, min interval 72 h",
            "gated",
            policy("weekly_all_gap72", schedule=weekly, max_estimated_drop=0.03, min_interval_hours=72),
        ),
        ReplayPolicy(
            "weekly_all_cap2",
            "weekly CT + drift + estimated drop 0.03 + observed drop, max 2 runs a week",
            "gated",
            policy("weekly_all_cap2", schedule=weekly, max_estimated_drop=0.03, max_runs_per_week=2),
        ),
        ReplayPolicy(
            "triggers_gap48",
            "no schedule; drift + estimated drop 0.03 + observed drop, min interval 48 h",
            "gated",
            policy("triggers_gap48", schedule=None, max_estimated_drop=0.03, min_interval_hours=48),
        ),
        # Added after the seven above were measured: the run budget of the goal (a third of the oracle's) spent
        # evenly, alone and with the triggers held to the same spacing (72 h also holds the scheduled runs back).
        ReplayPolicy("every3", "CT every 3rd night", "gated", policy("every3", schedule="0 2 */3 * *", **quiet)),
        ReplayPolicy(
            "every3_all_gap72",
            "CT every 3rd night + drift + estimated drop 0.03 + observed drop, min interval 72 h",
            "gated",
            policy("every3_all_gap72", schedule="0 2 */3 * *", max_estimated_drop=0.03, min_interval_hours=72),
        ),
    ]


ESTIMATE_THRESHOLDS = (0.02, 0.03, 0.05)


def delay_policies(spec: ModelSpec) -> list[ReplayPolicy]:
    """Goal 3: triggers only (no schedule, no drift trigger): labels-only against label-free estimate."""
    quiet: dict[str, Any] = {"schedule": None, "on_drift": False, "max_observed_drop": None, "max_estimated_drop": None}
    labels = RetrainPolicy.from_spec(spec, "labels_only", **{**quiet, "max_observed_drop": spec.drift.max_metric_drop})
    out = [ReplayPolicy("labels_only", f"observed drop > {spec.drift.max_metric_drop:g}", "gated", labels)]
    for bound in ESTIMATE_THRESHOLDS:
        name = f"estimate_{bound:g}"
        policy = RetrainPolicy.from_spec(spec, name, **{**quiet, "max_estimated_drop": bound})
        out.append(ReplayPolicy(name, f"estimated drop > {bound:g}", "gated", policy))
    return out


SCENARIO_A = Scenario("concept_change_30d", "(a) closed_loop: feature shift day 10, concept change day 20, 30 days")
SCENARIO_B = Scenario(
    "gradual_drift_40d",
    "(b) gradual drift: feature shift and concept change ramp 0 -> 1 from day 5 to day 35, 40 days",
    days=40,
    feature=Shift(1.0, "gradual", 5, 30),
    concept=Shift(1.0, "gradual", 5, 30),
    corrupt={},
)
DELAY_SCENARIOS = (
    Scenario(
        "delay_concept_only",
        "concept change from day 10 only (features unchanged)",
        feature=Shift(),
        concept=Shift(1.0, "step", 10),
        corrupt={},
        label_delay_days=7,
        degradation_day=10,
    ),
    Scenario(
        "delay_feature_only",
        "feature (covariate) shift from day 10 only (concept unchanged)",
        feature=Shift(1.0, "step", 10),
        concept=Shift(),
        corrupt={},
        label_delay_days=7,
        degradation_day=10,
    ),
    Scenario(
        "delay_feature_and_concept",
        "feature shift and concept change together from day 10",
        feature=Shift(1.0, "step", 10),
        concept=Shift(1.0, "step", 10),
        corrupt={},
        label_delay_days=7,
        degradation_day=10,
    ),
    # The case the label-free estimate is built for: the population moves towards the decision boundary (80 %
    # of the way to the median, as the batch of tests/e2e/test_retrain_policy_monitor.py), the concept unchanged;
    # the champion is less confident and its real ROC AUC drops. Strength fixed before any result was seen.
    Scenario(
        "delay_toward_center",
        "covariate shift towards the decision boundary from day 10 (applicants 80 % of the way to the median, "
        "concept unchanged)",
        feature=Shift(),
        concept=Shift(),
        center=Shift(0.8, "step", 10),
        corrupt={},
        label_delay_days=7,
        degradation_day=10,
    ),
)


def run_scenario(scenario: Scenario, make_policies: Callable[[ModelSpec], list[ReplayPolicy]]) -> dict[str, Any]:
    """Write the feed and replay it (through ``core.replay.replay``) in a temporary folder."""
    config = sim_config(scenario)
    spec = closed_loop.sim_spec(config)
    with tempfile.TemporaryDirectory(prefix="replay-goals-") as tmp:
        feed = Path(tmp) / "feed"
        clean = write_feed(scenario, feed)
        first = demo_data.DEFAULT_START + dt.timedelta(days=config.warmup)
        last = first + dt.timedelta(days=scenario.days - 1)

        def truth(batch: LandedBatch) -> Any:
            return clean[batch.name]

        started = time.perf_counter()
        report = replay(
            spec,
            feed,
            first,
            last,
            make_policies(spec),
            Path(tmp),
            label_delay_days=scenario.label_delay_days,
            truth=truth,
        )
        report["wall_seconds"] = round(time.perf_counter() - started, 1)
        report["load_average"] = os.getloadavg()
    report["scenario"] = {**asdict(scenario), "corrupt": {str(k): v for k, v in scenario.corrupt.items()}}
    report["decisions_sha256"] = digest(report)
    return report


def digest(report: dict[str, Any]) -> str:
    """A hash of every policy's decisions, day by day (no timings): equal runs give equal hashes."""
    return hashlib.sha256(json.dumps(decisions(report), sort_keys=True).encode()).hexdigest()[:16]


# ---- goal 1: cost of 90 days -------------------------------------------------------------------------
def cost_child(out: Path) -> None:
    """The 90-day replay itself (run in a child process): closed_loop's feed and five policies."""
    config = replace(closed_loop.SimConfig(), days=90)
    started = time.perf_counter()
    result = closed_loop.simulate(config)
    days = {
        name: [(r["day"], r["roc_auc"], r["version"], r["action"]) for r in p["days"]]
        for name, p in result["policies"].items()
    }
    summary = {
        "days": config.days,
        "policies": {
            name: {
                "label": p["label"],
                "mean_auc": p["mean_auc"],
                "ct_runs": p["ct_runs_schedule"] + p["ct_runs_drift"],
                "models_trained": p["models_trained"],
                "compute_seconds": p["compute_seconds"],
            }
            for name, p in result["policies"].items()
        },
        "distinct_models_trained": result["distinct_models_trained"],
        "validate_snapshot_calls": result["validate_snapshot_calls"],
        "seconds_by_step": result["seconds_by_step"],
        "simulation_seconds": round(time.perf_counter() - started, 1),
        "decisions_sha256": hashlib.sha256(json.dumps(days, sort_keys=True).encode()).hexdigest()[:16],
        "first_30_days": {name: rows[:30] for name, rows in days.items()},
    }
    out.write_text(json.dumps(summary, indent=2) + "\n")


def parse_time_log(text: str) -> dict[str, Any]:
    """Wall clock (seconds) and maximum RSS (MB) from ``/usr/bin/time -v`` output."""
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    cpu = re.search(r"Percent of CPU this job got: (\d+)%", text)
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    system = re.search(r"System time \(seconds\): ([\d.]+)", text)
    seconds = None
    if wall:
        parts = [float(x) for x in wall.group(1).split(":")]
        seconds = round(sum(v * 60**i for i, v in enumerate(reversed(parts))), 1)
    return {
        "wall_seconds": seconds,
        "max_rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None,
        "cpu_percent": int(cpu.group(1)) if cpu else None,
        # one process, one OpenMP thread: on an idle machine its wall time is about its CPU time
        "cpu_seconds": round(float(user.group(1)) + float(system.group(1)), 1) if user and system else None,
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def measure_cost() -> dict[str, Any]:
    """The 90-day replay in a child process under ``/usr/bin/time -v``, with the load before and after."""
    with tempfile.TemporaryDirectory(prefix="replay-goals-cost-") as tmp:
        out = Path(tmp) / "cost.json"
        cmd = ["/usr/bin/time", "-v", sys.executable, str(Path(__file__).resolve()), "--cost-child", str(out)]
        before = uptime()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        after = uptime()
        if proc.returncode != 0:
            raise SystemExit(f"the 90-day replay failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        child = json.loads(out.read_text())
    timing = parse_time_log(proc.stderr)
    reference = json.loads((RESULTS / "closed_loop.json").read_text())
    expected = {
        name: [[r["day"], r["roc_auc"], r["version"], r["action"]] for r in p["days"]]
        for name, p in reference["policies"].items()
    }
    same = child.pop("first_30_days") == expected
    return {
        "command": "/usr/bin/time -v python benchmarks/replay_goals.py --cost-child OUT.json",
        **timing,
        "uptime_before": before,
        "uptime_after": after,
        "goal_seconds": COST_GOAL_SECONDS,
        "met": timing["wall_seconds"] is not None and timing["wall_seconds"] <= COST_GOAL_SECONDS,
        "first_30_days_equal_closed_loop": same,
        **child,
    }


# ---- goal 2: policies vs the oracle --------------------------------------------------------------------
def oracle_goal(report: dict[str, Any]) -> dict[str, Any]:
    """Each policy's gap to the oracle's mean deployed metric and its share of the oracle's CT runs."""
    policies = report["policies"]
    oracle = policies["oracle"]
    rows = []
    for name, p in policies.items():
        gap = round(oracle["mean"] - p["mean"], 4)
        share = round(p["ct_runs"] / oracle["ct_runs"], 3) if oracle["ct_runs"] else None
        rows.append(
            {
                "policy": name,
                "label": p["label"],
                "mean": p["mean"],
                "worst": p["worst"],
                "gap_to_oracle": gap,
                "ct_runs": p["ct_runs"],
                "ct_runs_share_of_oracle": share,
                "models_trained": p["models_trained"],
                "promotions": p["promotions"],
                "corrupt_batches_served": len(p["corrupt_batches_served"]),
                "compute_seconds": p["compute_seconds"],
                "meets_goal": name != "oracle"
                and share is not None
                and gap <= ORACLE_GAP
                and share <= ORACLE_RUN_SHARE,
            }
        )
    return {"rows": rows, "met_by": [r["policy"] for r in rows if r["meets_goal"]]}


# ---- goal 3: days to a retrain request with late labels --------------------------------------------------
def delay_goal(report: dict[str, Any], start: int) -> dict[str, Any]:
    """Per policy: the first retrain request on or after the degradation's first day, and requests before it."""
    policies = report["policies"]
    rows = []
    for name, p in policies.items():
        requests = p["retrain_requests"]
        after = [r for r in requests if r["day"] >= start]
        first = after[0] if after else None
        values = [r["value"] for r in p["days"]]
        promoted = [r["day"] for r in p["days"] if re.search(r": promoted v\d", r.get("ct", ""))]
        rows.append(
            {
                "policy": name,
                "label": p["label"],
                "first_request_day": None if first is None else first["day"],
                "first_request_trigger": None if first is None else first["trigger"],
                "days_to_request": None if first is None else first["day"] - start,
                "requests_before_degradation": sum(1 for r in requests if r["day"] < start),
                "requests": [(r["day"], r["trigger"]) for r in requests],
                "ct_runs": p["ct_runs"],
                "promotions": p["promotions"],
                "first_promotion_day": promoted[0] if promoted else None,
                "promotion_days": promoted,
                "mean_before": round(sum(values[:start]) / start, 4),
                "mean_after": round(sum(values[start:]) / len(values[start:]), 4),
                "mean": p["mean"],
            }
        )
    return {"degradation_day": start, "days": report["days"], "rows": rows}


ESTIMATED_DROP = re.compile(r"estimated \S+ drop (-?[\d.]+)")


def estimate_hindsight(block: dict[str, Any]) -> dict[str, Any] | None:
    """The estimated drop each night of an estimate policy that never retrained (its champion is the warm-up
    model throughout): the largest before the degradation, the largest after it, and the first night after it
    that exceeds every night before (the best threshold in hindsight, no false alarm before the degradation)."""
    start = block["goal"]["degradation_day"]
    for name, days in block["daily"].items():
        if not name.startswith("estimate_"):
            continue
        rows = next(r for r in block["goal"]["rows"] if r["policy"] == name)
        if rows["requests"]:
            continue
        drops = [float(m[1]) if (m := ESTIMATED_DROP.search(text)) else None for _, text in days]
        if any(d is None for d in drops):
            return None
        before, after = drops[:start], drops[start:]
        worst_before = max(d for d in before if d is not None)
        first = next((i for i, d in enumerate(after) if d is not None and d > worst_before), None)
        return {
            "policy": name,
            "max_before": worst_before,
            "max_after": max(d for d in after if d is not None),
            "days_to_exceed_every_earlier_night": first,
        }
    return None


# ---- report ----------------------------------------------------------------------------------------------
def table(rows: list[dict[str, Any]], columns: dict[str, str]) -> str:
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value).replace("|", "\\|")


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def headline(result: dict[str, Any]) -> list[dict[str, str]]:
    """The three goals in one table: figure | measured | goal | met."""
    rows = []
    cost = result.get("cost")
    if cost:
        load = cost["uptime_before"].split("load average: ")[-1]
        rows.append(
            {
                "figure": "90-day replay, closed_loop's 5 policies (wall, peak RSS)",
                "measured": f"{_minutes(cost['wall_seconds'])}, {cost['max_rss_mb']} MB (load average {load})",
                "goal": "<= 10 min",
                "met": "yes" if cost["met"] else "no",
            }
        )
    for key in ("oracle_a", "oracle_b"):
        block = result.get(key)
        if not block:
            continue
        best = min(
            (r for r in block["goal"]["rows"] if r["policy"] not in ("oracle", "never")),
            key=lambda r: (r["ct_runs_share_of_oracle"] > ORACLE_RUN_SHARE, r["gap_to_oracle"], r["ct_runs"]),
        )
        oracle = next(r for r in block["goal"]["rows"] if r["policy"] == "oracle")
        rows.append(
            {
                "figure": f"{block['title'].split(':')[0]}: best policy within the run budget vs oracle "
                f"({oracle['mean']:.4f}, {oracle['ct_runs']} CT runs)",
                "measured": f"`{best['policy']}`: gap {best['gap_to_oracle']:+.4f}, "
                f"{best['ct_runs']} runs = {best['ct_runs_share_of_oracle']:.0%}",
                "goal": "gap <= 0.005 with <= 33 % of the runs",
                "met": "yes" if block["goal"]["met_by"] else "no",
            }
        )
    for block in result.get("delay", []):
        g = block["goal"]
        by = {r["policy"]: r for r in g["rows"]}
        labels = by["labels_only"]
        est = [r for n, r in by.items() if n.startswith("estimate_")]
        quick = [r for r in est if r["days_to_request"] is not None and r["days_to_request"] <= ESTIMATE_GOAL_DAYS]
        labels_days = labels["days_to_request"]
        met = bool(quick) and labels_days is not None and labels_days >= LABELS_GOAL_DAYS
        est_text = ", ".join(
            f"{r['policy'].removeprefix('estimate_')}: {_days(r['days_to_request'])}"
            f" ({r['requests_before_degradation']} before)"
            for r in est
        )
        rows.append(
            {
                "figure": f"days to a retrain request, labels 7 days late: {block['scenario']['title']}",
                "measured": f"labels-only {_days(labels_days)}; estimate {est_text}",
                "goal": "<= 2 estimate, >= 7 labels-only",
                "met": "yes" if met else "no",
            }
        )
    return rows


def _days(value: int | None) -> str:
    return "no request" if value is None else str(value)


ORACLE_COLUMNS = {
    "policy": "policy",
    "label": "rule",
    "mean": "mean ROC AUC",
    "gap_to_oracle": "gap to oracle",
    "worst": "worst",
    "ct_runs": "CT runs",
    "ct_runs_share_of_oracle": "share of oracle runs",
    "models_trained": "models trained",
    "promotions": "promotions",
    "corrupt_batches_served": "corrupt batches served",
    "meets_goal": "meets goal",
}
DELAY_COLUMNS = {
    "policy": "policy",
    "label": "trigger",
    "first_request_day": "first request (day)",
    "first_request_trigger": "by",
    "days_to_request": "days after degradation start",
    "requests_before_degradation": "requests before it",
    "ct_runs": "CT runs",
    "first_promotion_day": "first promotion (day)",
    "mean_before": "ROC AUC before",
    "mean_after": "ROC AUC from day 10",
}


#: Policies of scenario (a) that are closed_loop's own (same rule, same feed): their days must be equal.
SAME_AS_CLOSED_LOOP = {"oracle": "always", "weekly_drift": "gated_weekly_drift", "weekly": "gated_weekly"}


def closed_loop_check(block: dict[str, Any]) -> dict[str, bool]:
    """Scenario (a)'s deployed ROC AUC per day against ``closed_loop.json`` for the policies both replay."""
    path = RESULTS / "closed_loop.json"
    if not path.exists():
        return {}
    reference = json.loads(path.read_text())["policies"]
    return {
        ours: [round(v, 5) for v in block["daily"][ours]] == [r["roc_auc"] for r in reference[theirs]["days"]]
        for ours, theirs in SAME_AS_CLOSED_LOOP.items()
        if ours in block["daily"] and theirs in reference
    }


def render_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Replay goals",
        "",
        "`uv run python benchmarks/replay_goals.py` - every figure from `core.replay.replay` (the loop of "
        "`mlops replay`) on the `credit_default` demo feed with closed_loop's settings (600 rows/day, 14 warm-up "
        "batches, 2 candidates, 500 bootstrap resamples). Deterministic: the decisions of each replay are hashed "
        "(`decisions_sha256` in the JSON); the same seed gives the same hashes.",
        "",
        table(headline(result), {"figure": "figure", "measured": "measured", "goal": "goal", "met": "met"}),
        "",
    ]
    cost = result.get("cost")
    if cost:
        lines += [
            "## 1. Cost of a 90-day replay",
            "",
            f"`{cost['command']}`: wall {_minutes(cost['wall_seconds'])}, peak RSS {cost['max_rss_mb']} MB, "
            f"CPU {cost['cpu_percent']} % of one core. Load: before `{cost['uptime_before']}`, after "
            f"`{cost['uptime_after']}`. {cost['distinct_models_trained']} distinct models trained, "
            f"{cost['validate_snapshot_calls']} `validate_snapshot` calls; seconds by step "
            f"{cost['seconds_by_step']}. First 30 days identical to `closed_loop.json`: "
            f"{'yes' if cost['first_30_days_equal_closed_loop'] else 'NO'}.",
            "",
            table(
                [{"policy": n, **p} for n, p in cost["policies"].items()],
                {
                    "policy": "policy",
                    "label": "rule",
                    "mean_auc": "mean ROC AUC (90 d)",
                    "ct_runs": "CT runs",
                    "models_trained": "models trained",
                    "compute_seconds": "compute s (shared models charged to each)",
                },
            ),
            "",
        ]
        for note in result.get("cost_notes", []):
            lines += [note, ""]
        if result.get("cost_history"):
            lines += ["Timings of the 90-day replay (each with the load average of its start):", ""]
            lines += [
                f"- {h['what']}: {_minutes(h['wall_seconds'])}, peak RSS {h['max_rss_mb']} MB; `{h['uptime_before']}`"
                for h in result["cost_history"]
            ]
            lines.append("")
    for key in ("oracle_a", "oracle_b"):
        block = result.get(key)
        if not block:
            continue
        g = block["goal"]
        lines += [
            f"## 2{key[-1]}. {block['title']}",
            "",
            f"Label delay {block['label_delay_days']} days; replay wall {block['wall_seconds']} s "
            f"(load {block['load_average'][0]:.1f}). Goal: within {ORACLE_GAP} of the oracle's mean with <= "
            f"{ORACLE_RUN_SHARE:.0%} of its CT runs. Met by: {', '.join(g['met_by']) or 'no policy'}.",
            "",
            table(
                [{**r, "ct_runs_share_of_oracle": f"{r['ct_runs_share_of_oracle']:.0%}"} for r in g["rows"]],
                ORACLE_COLUMNS,
            ),
            "",
        ]
        if key == "oracle_a":
            same = closed_loop_check(block)
            lines += [
                "Determinism: the policies closed_loop also replays give the same deployed ROC AUC on every day as "
                "`closed_loop.json` (a separate process): "
                + ", ".join(f"{n} = {SAME_AS_CLOSED_LOOP[n]}: {'yes' if ok else 'NO'}" for n, ok in same.items())
                + ".",
                "",
            ]
    if result.get("oracle_a") or result.get("oracle_b"):
        lines += ["![deployed ROC AUC per day, scenarios (a) and (b)](replay_goals.png)", ""]
    delay = result.get("delay", [])
    if delay:
        lines += [
            "## 3. Days a degraded champion serves before a retrain is requested (labels 7 days late)",
            "",
            "Triggers only (no schedule, no drift trigger), so a request is the trigger's own: labels-only = "
            "observed drop of the champion's ROC AUC on the newest labelled batch (7 days old) against its "
            "ROC AUC at promotion; estimate = the label-free (confidence-based) estimate of the champion's ROC "
            "AUC on the newest batch against the same reference, three thresholds. Days = first night with a "
            "request on or after the degradation's first day, minus that day (0 = the night after the first "
            "degraded day). Requests before it are false alarms.",
            "",
        ]
        for block in delay:
            lines += [
                f"### {block['scenario']['title']}",
                "",
                table(block["goal"]["rows"], DELAY_COLUMNS),
                "",
            ]
            seen = estimate_hindsight(block)
            if seen:
                lines += [
                    f"Estimated drop of the never-retrained champion (`{seen['policy']}`): at most "
                    f"{seen['max_before']:+.3f} on days 0-{block['goal']['degradation_day'] - 1}, at most "
                    f"{seen['max_after']:+.3f} from day {block['goal']['degradation_day']}; the first night above "
                    f"every earlier one (the best threshold in hindsight): "
                    f"{_days(seen['days_to_exceed_every_earlier_night'])} day(s) after the start.",
                    "",
                ]
        notes = result.get("delay_notes")
        if notes:
            lines += [*notes, ""]
    if result.get("findings"):
        lines += ["## Findings", "", *result["findings"], ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Deployed ROC AUC per day: oracle and candidates in scenarios (a) and (b)."""
    from matplotlib.figure import Figure

    blocks = [result[k] for k in ("oracle_a", "oracle_b") if result.get(k)]
    if not blocks:
        return
    fig = Figure(figsize=(12, 4.5 * len(blocks)))
    axes = fig.subplots(len(blocks), 1, squeeze=False)[:, 0]
    for ax, block in zip(axes, blocks, strict=True):
        for name, days in block["daily"].items():
            style = {"linewidth": 2.5, "color": "black"} if name == "oracle" else {"linewidth": 1}
            ax.plot(range(len(days)), days, label=name, **style)
        ax.set_title(block["title"], fontsize=10)
        ax.set(xlabel="replayed day", ylabel="deployed ROC AUC")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=3, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def oracle_block(scenario: Scenario) -> dict[str, Any]:
    report = run_scenario(scenario, lambda spec: oracle_policies(spec, sim_config(scenario)))
    return {
        "title": scenario.title,
        "scenario": report["scenario"],
        "label_delay_days": report["label_delay_days"],
        "wall_seconds": report["wall_seconds"],
        "load_average": report["load_average"],
        "decisions_sha256": report["decisions_sha256"],
        "distinct_models_trained": report["distinct_models_trained"],
        "goal": oracle_goal(report),
        "policies": {n: {k: v for k, v in p.items() if k != "days"} for n, p in report["policies"].items()},
        "daily": {n: [r["value"] for r in p["days"]] for n, p in report["policies"].items()},
        "plot": "replay_goals.png",
    }


def delay_block(scenario: Scenario) -> dict[str, Any]:
    report = run_scenario(scenario, delay_policies)
    assert scenario.degradation_day is not None
    return {
        "scenario": report["scenario"],
        "wall_seconds": report["wall_seconds"],
        "load_average": report["load_average"],
        "decisions_sha256": report["decisions_sha256"],
        "goal": delay_goal(report, scenario.degradation_day),
        "daily": {n: [(r["value"], r["decision"][:140]) for r in p["days"]] for n, p in report["policies"].items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--goals", default="cost,oracle,delay", help="comma-separated subset of cost,oracle,delay")
    parser.add_argument("--markdown-only", action="store_true", help="re-render Markdown and plot from the JSON")
    parser.add_argument("--cost-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cost_child:
        cost_child(args.cost_child)
        return 0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / "replay_goals.json"
    result: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    goals = {g.strip() for g in args.goals.split(",") if g.strip()}
    if not args.markdown_only:
        if "oracle" in goals:
            result["oracle_a"] = oracle_block(SCENARIO_A)
            result["oracle_b"] = oracle_block(SCENARIO_B)
            path.write_text(json.dumps(result, indent=2) + "\n")
        if "delay" in goals:
            result["delay"] = [delay_block(s) for s in DELAY_SCENARIOS]
            path.write_text(json.dumps(result, indent=2) + "\n")
        if "cost" in goals:
            cost = measure_cost()
            result["cost"] = cost
            history = result.setdefault("cost_history", [])
            history.append(
                {
                    "what": f"measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
                    "wall_seconds": cost["wall_seconds"],
                    "max_rss_mb": cost["max_rss_mb"],
                    "uptime_before": cost["uptime_before"],
                }
            )
    path.write_text(json.dumps(result, indent=2) + "\n")
    (out / "replay_goals.md").write_text(render_markdown(result))
    plot(result, out / "replay_goals.png")
    for row in headline(result):
        print(f"{row['figure']}: {row['measured']} (goal {row['goal']}: {row['met']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
