"""Run time of each ``ct_credit_default`` task on the demo data (embedded default, ``dag.test()``).

``uv run python benchmarks/ct_task_timings.py`` runs the DAG twice in a private Airflow home and MLflow
store: run 1 has no champion (first-run policy), run 2 one day later is judged against run 1's champion.
As ``make demo`` does, the smoke test's forkserver is started when run 1 starts (its imports overlap the
first tasks).
Task durations come from the task instances' start and end dates; the host's load averages (1, 5, 15 min)
before and after each run are recorded beside them (on a busy host the fits, which use every core, slow
down most). Results go to benchmarks/results/ct_task_timings.{json,md}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEPLOY_TASKS = ("evaluate_vs_champion", "gate", "register_challenger", "smoke_test", "promote")


def setup_env() -> Path:
    home = Path(tempfile.mkdtemp(prefix="mlops-bench-"))
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "MLOPS_HOME": str(home / "mlops"),
            "GX_ANALYTICS_ENABLED": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
    )
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    # as make demo's airflow-db step: the metadata DB and the MLflow store are migrated before the first run
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    (home / "mlops" / "mlflow").mkdir(parents=True)
    store = f"sqlite:///{home / 'mlops' / 'mlflow' / 'mlflow.db'}"
    subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", store], check=True, capture_output=True)
    return home


def durations(dag_run) -> dict[str, float]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    out: dict[str, float] = {}
    with create_session() as session:
        for ti in session.query(TaskInstance).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
        ):
            if ti.start_date and ti.end_date:
                key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
                out[key] = (ti.end_date - ti.start_date).total_seconds()
    return out


def main() -> dict:
    home = setup_env()
    from mlops_airflow.core import demo_data
    from mlops_airflow.core.fresh_process import start_server
    from mlops_airflow.dag_factory import build_dags

    landing = home / "mlops" / "data" / "landing" / "credit_default"
    demo_data.write_batches(landing, range(15))
    runs = {}
    for label, new_day in (("run1_first", None), ("run2_vs_champion", 15)):
        if new_day is not None:
            demo_data.write_batch(landing, new_day)
        load_before = [round(x, 2) for x in os.getloadavg()]
        started = time.perf_counter()
        if new_day is None:  # as make demo runs it: the smoke test's interpreter warms up beside the first tasks
            start_server()
        dag_run = build_dags()["ct_credit_default"].test()
        wall = time.perf_counter() - started
        load_after = [round(x, 2) for x in os.getloadavg()]
        tasks = durations(dag_run)
        task_sum = sum(tasks.values())
        deploy = sum(v for k, v in tasks.items() if k in DEPLOY_TASKS)
        runs[label] = {
            "state": str(dag_run.state),
            "wall_s": round(wall, 2),
            "tasks_s": {k: round(v, 2) for k, v in sorted(tasks.items())},
            "task_time_sum_s": round(task_sum, 2),
            "deploy_share": round(deploy / task_sum, 3) if task_sum else None,
            "deploy_tasks_share": {k: round(tasks.get(k, 0) / task_sum, 3) for k in DEPLOY_TASKS},
            "load_average_before": load_before,
            "load_average_after": load_after,
        }
    result = {"model": "credit_default", "rows_per_day": 1000, "train_days": 14, "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ct_task_timings.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| task | run 1 (no champion) s | run 2 (vs champion) s |", "|---|---|---|"]
    names = sorted(set(runs["run1_first"]["tasks_s"]) | set(runs["run2_vs_champion"]["tasks_s"]))
    for name in names:
        a = runs["run1_first"]["tasks_s"].get(name, "-")
        b = runs["run2_vs_champion"]["tasks_s"].get(name, "-")
        lines.append(f"| {name} | {a} | {b} |")
    for key, title in (("task_time_sum_s", "sum of task times"), ("wall_s", "dag.test() wall time")):
        lines.append(f"| **{title}** | {runs['run1_first'][key]} | {runs['run2_vs_champion'][key]} |")
    lines.append(
        f"| **share in evaluate+gate+register+smoke+promote** | {runs['run1_first']['deploy_share']:.1%} "
        f"| {runs['run2_vs_champion']['deploy_share']:.1%} |"
    )
    lines.append(
        "| **load average (1, 5, 15 min) before / after** | "
        + " | ".join(
            f"{runs[k]['load_average_before']} / {runs[k]['load_average_after']}"
            for k in ("run1_first", "run2_vs_champion")
        )
        + " |"
    )
    (RESULTS / "ct_task_timings.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
