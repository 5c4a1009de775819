"""The models overview (fleet view) with 50 registered models in a real MLflow store: render time and MLflow calls.

In a private ``MLOPS_HOME`` (the embedded default: SQLite MLflow store, local signing key), ``--models`` model
specs (the demo model under other names) and, for each model, what its DAGs leave in MLflow: an experiment with
``--ct-runs`` ``ct`` runs and as many ``monitor`` runs (drift share, drifted-feature count, retrain tags),
``--versions`` registered versions made by those CT runs, each promoted in turn (promotion tags, gate
signature), ``champion`` on the newest. The runs are made day by day across the fleet, as nightly schedules
leave them. Some models are made red (drift over the threshold, a champion whose
signature does not check), some amber (a champion promoted 45 days ago, no monitor run), the rest green.

Then ``GET /mlops/models/`` is answered ``--repeat`` times by the plugin's app (FastAPI's test client, in this
process; Airflow's login and per-DAG permission are replaced by a user allowed everything, they do not touch
MLflow), timing the whole answer: reading the 50 specs, MLflow, rendering. MLflow calls are counted by
wrapping the page's client. For comparison, the same rows are read the way the page read them before the fleet
view: one :func:`mlops_airflow.ui.app._status` per model (registered model, versions, each promoted version's
source run, experiment, newest CT and monitor runs, the drift report and plot list, the resolver's alias read).

Writes ``benchmarks/results/fleet_view.json`` and ``.md``.

    uv run --frozen python benchmarks/fleet_view.py [--models 50] [--versions 5] [--ct-runs 10] [--repeat 5]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BASE_MODEL = "credit_default"


class CountingClient:
    """An MLflow client that counts the calls made through it, by method name."""

    def __init__(self, client: Any, counts: collections.Counter[str]) -> None:
        self._client, self._counts = client, counts

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._counts[name] += 1
            return attr(*args, **kwargs)

        return call


def write_specs(models_dir: Path, names: list[str]) -> None:
    spec = yaml.safe_load((REPO / "include" / "models" / f"{BASE_MODEL}.yaml").read_text())
    models_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        (models_dir / f"{name}.yaml").write_text(yaml.safe_dump(spec | {"name": name}, sort_keys=False))


def populate(client: Any, key: bytes, names: list[str], versions: int, ct_runs: int) -> dict[str, str]:
    """Each model's MLflow state as its DAGs leave it, runs interleaved day by day as a fleet's nightly
    schedules leave them; returns the health each model was made to have."""
    from mlops_airflow.core import tracking
    from mlops_airflow.core.registry import CHAMPION, TAG_DAG_ID, TAG_RUN_ID
    from mlops_airflow.core.trust import TAG_SIGNATURE, ModelRegistry, gate_signature

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    made, experiments = {}, {}
    for i, name in enumerate(names):
        made[name] = "red" if i % 10 in (0, 1) else "amber" if i % 10 in (2, 3) else "green"
        experiments[name] = tracking.experiment_id(client, name)
        ModelRegistry(client, name).ensure_model()
    runs: dict[str, list[tuple[str, str, str]]] = {name: [] for name in names}
    for day in range(ct_runs):
        run_id = f"scheduled__{(now - dt.timedelta(days=ct_runs - day)).isoformat()}"
        for i, name in enumerate(names):
            tags = {
                "mlops.kind": "ct",
                TAG_DAG_ID: f"ct_{name}",
                TAG_RUN_ID: run_id,
                "mlops.validation": "passed",
                "mlops.gate.blessed": "true",
                "mlops.gate.reason": "blessed: non-inferior to the champion",
            }
            run = client.create_run(experiments[name], tags=tags)
            client.log_param(run.info.run_id, "data_hash", f"hash-{name}-{day}")
            client.set_terminated(run.info.run_id, "FINISHED")
            runs[name].append((run.info.run_id, run_id, f"hash-{name}-{day}"))
            if made[name] == "amber" and i % 10 == 3:
                continue  # no monitor run yet
            share = 0.6 if made[name] == "red" and i % 10 == 0 and day == ct_runs - 1 else 0.1
            tags = {"mlops.kind": "monitor", TAG_DAG_ID: f"monitor_{name}", TAG_RUN_ID: run_id}
            run = client.create_run(experiments[name], tags=tags)
            client.log_metric(run.info.run_id, "drift_share", share)
            client.log_metric(run.info.run_id, "drifted_features", round(share * 10))
            client.set_tag(run.info.run_id, "mlops.retrain_requested", "false")
            client.set_terminated(run.info.run_id, "FINISHED")
    for i, name in enumerate(names):
        previous = None
        for n, (mlflow_run, airflow_run, data_hash) in enumerate(runs[name][-versions:]):
            days_ago = 45 if made[name] == "amber" and i % 10 == 2 else versions - n
            tags = {
                TAG_DAG_ID: f"ct_{name}",
                TAG_RUN_ID: airflow_run,
                "mlops.data_hash": data_hash,
                "mlops.gate.champion_version": previous or "",
                "mlops.promoted_at": (now - dt.timedelta(days=days_ago)).isoformat(),
                "mlops.promotion_reason": f"blessed by the gate in ct_{name} run {airflow_run}",
            }
            mv = client.create_model_version(name, f"/models/{name}/{n}", run_id=mlflow_run, tags=tags)
            signature = gate_signature(
                key,
                model=name,
                version=str(mv.version),
                source=str(mv.source),
                run_id=mlflow_run,
                data_hash=data_hash,
                blessed=True,
                champion_version=previous,
            )
            if not (made[name] == "red" and i % 10 == 1):  # a champion whose signature does not check
                client.set_model_version_tag(name, str(mv.version), TAG_SIGNATURE, signature)
            client.set_registered_model_alias(name, CHAMPION, str(mv.version))
            previous = str(mv.version)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--versions", type=int, default=5)
    parser.add_argument("--ct-runs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="fleet-view-"))
    os.environ.update({"MLOPS_HOME": str(home / "mlops"), "MLOPS_MODELS_DIR": str(home / "models")})
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for var in ("MLFLOW_TRACKING_URI", "MLOPS_SIGNING_KEY", "MLOPS_DATA_ROOT", "MLOPS_STORAGE_BASE"):
        os.environ.pop(var, None)

    from fastapi.testclient import TestClient

    from mlops_airflow.core import settings, tracking
    from mlops_airflow.core.signing import signing_key
    from mlops_airflow.ui import app as page

    names = [f"model_{i:02d}" for i in range(args.models)]
    write_specs(home / "models", names)
    uri = settings.default_tracking_uri()
    client = tracking.client_for(uri)
    key = signing_key(uri)
    assert key is not None
    began = time.perf_counter()
    made = populate(client, key, names, args.versions, args.ct_runs)
    populate_s = time.perf_counter() - began

    counts: collections.Counter[str] = collections.Counter()
    page._client = lambda: CountingClient(tracking.client_for(uri), counts)  # type: ignore[assignment]
    page._may_read = lambda user, name: True  # type: ignore[assignment]
    page.app.dependency_overrides[page.require_user] = lambda: "benchmark"
    http = TestClient(page.app)

    timings, answer = [], None
    for _ in range(args.repeat + 1):  # the first answer warms imports and caches up: not counted
        counts.clear()
        began = time.perf_counter()
        answer = http.get("/models/?sort=health")
        timings.append(time.perf_counter() - began)
        assert answer.status_code == 200, answer.text[:2000]
    fleet_calls = dict(counts)
    assert answer is not None
    html = answer.text
    shown = {name: html.split(f"data-model='{name}' data-health='")[1].split("'")[0] for name in names}
    assert shown == made, {n: (made[n], shown[n]) for n in names if shown[n] != made[n]}

    specs, _ = page._specs()
    counts.clear()
    began = time.perf_counter()
    for name in names:
        page._status(specs[name])
    per_model_s = time.perf_counter() - began
    per_model_calls = dict(counts)

    measured = timings[1:]
    result = {
        "models": args.models,
        "versions_per_model": args.versions,
        "ct_runs_per_model": args.ct_runs,
        "monitor_runs_per_model": args.ct_runs,
        "repeat": args.repeat,
        "populate_s": round(populate_s, 1),
        "page_s": {
            "median": round(statistics.median(measured), 3),
            "min": round(min(measured), 3),
            "max": round(max(measured), 3),
            "first": round(timings[0], 3),
        },
        "page_mlflow_calls": sum(fleet_calls.values()),
        "page_mlflow_calls_by_method": fleet_calls,
        "health": dict(collections.Counter(made.values())),
        "per_model_status_s": round(per_model_s, 3),
        "per_model_status_mlflow_calls": sum(per_model_calls.values()),
        "per_model_status_mlflow_calls_by_method": per_model_calls,
        "page_bytes": len(html.encode()),
        "cpu_count": os.cpu_count(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fleet_view.json").write_text(json.dumps(result, indent=2) + "\n")
    calls = ", ".join(f"{k} {v}" for k, v in sorted(fleet_calls.items()))
    old_calls = ", ".join(f"{k} {v}" for k, v in sorted(per_model_calls.items()))
    md = f"""# Models overview (fleet view): render time with {args.models} models

`uv run --frozen python benchmarks/fleet_view.py` (embedded default: SQLite MLflow store, local signing key;
in-process FastAPI test client; 2 cores shared with other jobs).

{args.models} registered models, each with {args.versions} versions, {args.ct_runs} `ct` and {args.ct_runs}
`monitor` runs; health as made and as shown: {result["health"]} (all {args.models} rows shown as made).

| | time | MLflow calls |
|---|---|---|
| `GET /mlops/models/?sort=health` (specs, MLflow, HTML), median of {args.repeat} | \
{result["page_s"]["median"] * 1000:.0f} ms (min {result["page_s"]["min"] * 1000:.0f}, \
max {result["page_s"]["max"] * 1000:.0f}) | {result["page_mlflow_calls"]} |
| the same rows read per model (`_status` x {args.models}, the page before the fleet view), MLflow only | \
{per_model_s * 1000:.0f} ms | {result["per_model_status_mlflow_calls"]} |

Calls of the page: {calls}.

Calls per model: {old_calls}.

The first answer (imports, first connection) took {timings[0] * 1000:.0f} ms and is not counted. Populating
the store took {populate_s:.0f} s.
"""
    (RESULTS / "fleet_view.md").write_text(md)
    print(md)
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
