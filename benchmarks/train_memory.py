"""Peak memory of one training task's work at scale: how the training window is held, and glibc's threshold.

``uv run --frozen python benchmarks/train_memory.py [--rows-per-day 66667]`` writes 14 daily demo batches and
their snapshot to a temporary folder, then runs the steps of a ``train`` task (read the snapshot's training
window, split off the newest day, fit the spec's pipeline, score the validation day) in a fresh process under
``/usr/bin/time -v`` for each variant, twice, alternating:

* ``plain``: text columns as one Python string per row, glibc's own (sliding) mmap threshold;
* ``categorical``: the spec's text columns read as pandas categoricals (``load_part(categorical=...)``);
* ``categorical+threshold``: and the mmap threshold fixed (``large_buffers_to_os()``), as the task runs it.

Each child also reports the frame's pandas deep size and the fit's wall time. Results go to
``benchmarks/results/train_memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
VARIANTS = ("plain", "categorical", "categorical+threshold")


def child(snapshot_dir: str, variant: str) -> None:
    """One train task's steps on the snapshot, as the variant says; prints a JSON line."""
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.core.data import load_part, read_manifest
    from mlops_airflow.core.training import fit_candidate, large_buffers_to_os

    spec = get_spec("credit_default")
    if variant.endswith("+threshold"):
        large_buffers_to_os()
    snapshot = read_manifest(snapshot_dir)
    categorical = spec.text_columns if variant.startswith("categorical") else ()
    train = load_part(snapshot, "train", spec.input_columns, categorical)
    frame_mb = train.memory_usage(deep=True).sum() / 2**20
    started = time.perf_counter()
    fit_candidate(spec, {"learning_rate": 0.1, "max_leaf_nodes": 31}, train)
    print(json.dumps({"frame_mb": round(frame_mb, 1), "fit_s": round(time.perf_counter() - started, 2)}))


def measure(snapshot_dir: str, variant: str) -> dict[str, Any]:
    """The child under ``/usr/bin/time -v`` (``scale.timed``): its peak RSS, wall time and reported figures."""
    from scale import timed

    run = timed([sys.executable, __file__, "_child", snapshot_dir, variant], dict(os.environ))
    if run["returncode"] != 0 or not run["stdout_tail"]:
        raise SystemExit(f"train_memory child {variant!r} failed (exit {run['returncode']})")
    return {
        "variant": variant,
        "peak_rss_mb": run["peak_rss_mb"],
        "wall_s": run["wall_s"],
        **json.loads(run["stdout_tail"][-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows-per-day", type=int, default=66_667)
    args = parser.parse_args()

    from mlops_airflow.core import demo_data
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.core.data import write_snapshot

    spec = get_spec("credit_default")
    with tempfile.TemporaryDirectory(prefix="mlops-train-memory-") as tmp:
        landing = Path(tmp) / "landing"
        demo_data.write_batches(landing, range(15), n_rows=args.rows_per_day)
        snapshot = write_snapshot(spec, str(landing), str(Path(tmp) / "snapshots" / "s"))
        runs = [measure(str(snapshot.path()), v) for _ in range(2) for v in VARIANTS]

    best = {v: min((r for r in runs if r["variant"] == v), key=lambda r: r["peak_rss_mb"]) for v in VARIANTS}
    result = {
        "command": "uv run --frozen python benchmarks/train_memory.py"
        + (f" --rows-per-day {args.rows_per_day}" if args.rows_per_day != 66_667 else ""),
        "training_rows": snapshot.train_rows,
        "cores": os.cpu_count(),
        "runs": runs,
    }
    lines = [
        f"# One train task's steps on {snapshot.train_rows:,} training rows (credit_default), fresh process each",
        "",
        f"Command: `{result['command']}`; two runs per variant, alternating; the lower peak of the two.",
        "",
        "| variant | frame (pandas deep) MB | peak RSS MB | fit + score s | process wall s |",
        "|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        r = best[v]
        lines.append(f"| {v} | {r['frame_mb']} | {r['peak_rss_mb']} | {r['fit_s']} | {r['wall_s']} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "train_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
