"""``make demo``: one run of ``ct_credit_default`` end to end on the embedded default.

Runs the DAG with ``dag.test()`` (the same code path as a scheduled run, in this process, on the SQLite
metadata DB), then says what happened and where to look. ``make`` has already generated the demo data,
migrated the DB and created the ``mlflow_registry`` pool.
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    from mlops_airflow.core import settings
    from mlops_airflow.core.registry import ModelRegistry
    from mlops_airflow.core.tracking import client_for, parent_run_id, run_url
    from mlops_airflow.dag_factory import build_dags

    dag_id = "ct_credit_default"
    started = time.perf_counter()
    dag_run = build_dags()[dag_id].test()
    seconds = time.perf_counter() - started

    client = client_for(settings.default_tracking_uri())
    experiment = client.get_experiment_by_name("credit_default")
    run_id = parent_run_id(client, experiment.experiment_id, dag_id, dag_run.run_id) if experiment else None
    champion = ModelRegistry(client, "credit_default").champion()

    line = "=" * 78
    print(f"\n{line}\n{dag_id} run {dag_run.run_id}: {dag_run.state} in {seconds:.0f} s")
    if run_id and experiment:
        run = client.get_run(run_id)
        tags = run.data.tags
        print(
            f"  data hash       {tags.get('mlops.data_hash', '?')[:16]}...  validation: {tags.get('mlops.validation')}"
        )
        auc = run.data.metrics.get("candidate_roc_auc")
        if auc is not None:
            print(f"  candidate       ROC AUC {auc:.4f} on the newest day")
        print(f"  gate            blessed={tags.get('mlops.gate.blessed')}  {tags.get('mlops.gate.reason', '')[:90]}")
        print(f"  MLflow run      {run_url(experiment.experiment_id, run_id)}")
    if champion is not None:
        print(f"  champion        models:/credit_default@champion = version {champion.version}")
    print(f"  MLflow store    {settings.default_tracking_uri()}")
    print(
        "\nOpen the UIs:  make up   (Airflow http://127.0.0.1:8080, login printed by make up; "
        f"MLflow {settings.mlflow_ui_url()})"
    )
    print("Run again on a new day:  make demo-day demo")
    print('A drifted day:           make demo-day DEMO_DAY_ARGS="--feature-shift 1" demo')
    print(line)
    return 0 if str(dag_run.state) == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
