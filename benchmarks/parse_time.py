"""DAG-file parse cost: wall time and peak RSS of importing the DAG folder in a fresh interpreter.

``uv run python benchmarks/parse_time.py`` -> benchmarks/results/parse_time.json. Each repetition is a new
process (what the dag-processor pays per file), timed around the import only, with the heavy libraries'
absence recorded too.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import json, resource, sys, time
t0 = time.perf_counter()
import airflow.sdk  # what every DAG file pays anyway
t1 = time.perf_counter()
import importlib.util
spec = importlib.util.spec_from_file_location("mlops_dags", sys.argv[1])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
t2 = time.perf_counter()
heavy = [m for m in ("pandas", "sklearn", "mlflow", "great_expectations", "scipy", "matplotlib") if m in sys.modules]
dags = [k for k, v in vars(module).items() if type(v).__name__ == "DAG"]
print(json.dumps({"airflow_sdk_s": t1 - t0, "dag_file_s": t2 - t1, "dags": len(dags), "heavy": heavy,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main(repeats: int = 7) -> dict:
    dag_file = REPO / "dags" / "mlops_dags.py"
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", PROBE, str(dag_file)], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {
        "dag_file": str(dag_file.relative_to(REPO)),
        "repeats": repeats,
        "dags": runs[0]["dags"],
        "dag_file_parse_s_median": statistics.median(r["dag_file_s"] for r in runs),
        "dag_file_parse_s_max": max(r["dag_file_s"] for r in runs),
        "airflow_sdk_import_s_median": statistics.median(r["airflow_sdk_s"] for r in runs),
        "max_rss_mb_median": statistics.median(r["max_rss_mb"] for r in runs),
        "heavy_modules_loaded": runs[0]["heavy"],
    }
    (REPO / "benchmarks" / "results" / "parse_time.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
