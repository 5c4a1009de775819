"""GX validation of a first run's landed files: judged file by file, or files of one schema together.

``uv run python benchmarks/validation_groups.py [--rows-per-day N] [--days D]`` lands D demo batches, writes a
snapshot, and times ``validate_snapshot`` with no verdict cache (every file judged, as on a first run), once
with the files of one schema judged together (the default) and once file by file (``GROUP_ROWS = 1``, which
was the only way before). GX is imported and warmed up first: its import is paid once per process either way.
Each figure is the median of 3 repeats. The verdicts must be equal. Results go to
benchmarks/results/validation_groups.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows-per-day", type=int, default=1000)
    parser.add_argument("--days", type=int, default=15)
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    home = Path(tempfile.mkdtemp(prefix="mlops-bench-validation-"))
    os.environ["MLOPS_HOME"] = str(home)

    from mlops_airflow.core import demo_data, validation
    from mlops_airflow.core.config import load_model_spec
    from mlops_airflow.core.data import write_snapshot

    spec = load_model_spec(REPO / "include" / "models" / "credit_default.yaml")
    landing = home / "landing"
    demo_data.write_batches(landing, range(args.days), n_rows=args.rows_per_day)
    snapshot = write_snapshot(spec, str(landing), str(home / "snapshot"))
    started = time.perf_counter()
    validation.validate_snapshot(spec, snapshot)  # imports GX, warms its registries
    first_call = time.perf_counter() - started

    default_rows = validation.GROUP_ROWS
    figures: dict[str, dict] = {}
    for label, group_rows in (("together", default_rows), ("file_by_file", 1)):
        validation.GROUP_ROWS = group_rows
        times, summaries = [], []
        for _ in range(3):
            started = time.perf_counter()
            summaries.append(validation.validate_snapshot(spec, snapshot))
            times.append(time.perf_counter() - started)
        summary = summaries[-1]
        figures[label] = {
            "median_s": round(statistics.median(times), 3),
            "runs_s": [round(t, 3) for t in times],
            "success": summary.success,
            "failed": len(summary.failed),
            "evaluated": summary.evaluated,
        }
    validation.GROUP_ROWS = default_rows
    assert {k: v for k, v in figures["together"].items() if k in ("success", "failed", "evaluated")} == {
        k: v for k, v in figures["file_by_file"].items() if k in ("success", "failed", "evaluated")
    }, figures
    ratio = figures["file_by_file"]["median_s"] / figures["together"]["median_s"]
    result = {
        "files": len(snapshot.batches),
        "rows_per_file": args.rows_per_day,
        "first_call_with_gx_import_s": round(first_call, 2),
        "group_rows": default_rows,
        **figures,
        "file_by_file_over_together": round(ratio, 2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.rows_per_day == 1000 else f"_{args.rows_per_day}"
    (RESULTS / f"validation_groups{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Validation of {result['files']} landed files of {args.rows_per_day:,} rows, no verdict cache",
        "",
        "`uv run python benchmarks/validation_groups.py"
        + ("" if args.rows_per_day == 1000 else f" --rows-per-day {args.rows_per_day}")
        + "` (median of 3, GX already imported)",
        "",
        "| how | validate_snapshot s | evaluated expectation results | failed |",
        "|---|---|---|---|",
        f"| files of one schema together (default) | {figures['together']['median_s']} "
        f"| {figures['together']['evaluated']} | {figures['together']['failed']} |",
        f"| file by file | {figures['file_by_file']['median_s']} | {figures['file_by_file']['evaluated']} "
        f"| {figures['file_by_file']['failed']} |",
        "",
        f"File by file / together: **{ratio:.2f}x**. The first call of the process, GX's import included: "
        f"{result['first_call_with_gx_import_s']} s. Load average at the end: {result['load_average']}.",
    ]
    (RESULTS / f"validation_groups{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
