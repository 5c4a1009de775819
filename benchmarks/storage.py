"""Storage of snapshots: bytes a nightly ``snapshot`` task writes, and what the model's storage holds after
a month of daily runs.

``uv run --frozen python benchmarks/storage.py [--rows-per-day 1000] [--days 30]`` lands the demo feed
(:mod:`mlops_airflow.core.demo_data`, ``credit_default``) in a temporary folder: 15 daily batches before the
first run, then one new batch a day for ``--days`` daily runs. Each run calls ``write_snapshot`` exactly as
the ``snapshot`` task does (the model's ``snapshots/<key>`` below a storage root, ``within`` its
``snapshots/`` folder, the model's batch store ``batches/``, the Airflow run id).

Measured after each run, by listing the storage folder before and after: the bytes of every file that is new
or changed (Parquet objects, manifests). Ratios:

* per daily run: bytes written / bytes of the batch landed that day (the CSV file). Goal <= 1.5.
* total: bytes the storage folder holds after the last run / bytes landed in all (every CSV). Goal <= 1.2.

For comparison, what the code before the batch store wrote (a Parquet copy of every batch of the window under
each run's prefix) is computed from the same runs: the sizes of the Parquet objects each manifest names
(the same encoder, the same bytes) plus its manifest. Results go to ``benchmarks/results/storage.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FIRST_DAYS = 15  # the first run's window: 14 days of training, the newest for evaluation
GOAL_PER_RUN, GOAL_TOTAL = 1.5, 1.2


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``root``: relative path -> (size, mtime in ns)."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            st = path.stat()
            found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


def written(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> int:
    """Bytes of the files new or changed between two listings (a reused object whose time was refreshed is
    not counted: its bytes were not written again)."""
    return sum(size for path, (size, _) in after.items() if path not in before or before[path][0] != size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows-per-day", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30, help="daily runs after the first (default 30)")
    args = parser.parse_args()

    from mlops_airflow.core import demo_data
    from mlops_airflow.core.batch_store import SNAPSHOTS, STORE
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.core.data import snapshot_key, write_snapshot

    spec = get_spec(spec_name := "credit_default")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mlops-storage-") as tmp:
        landing, storage = Path(tmp) / "landing", Path(tmp) / "storage"
        model_root = storage / spec_name
        snapshots = model_root / SNAPSHOTS
        demo_data.write_batches(landing, range(FIRST_DAYS), n_rows=args.rows_per_day)
        for day in range(FIRST_DAYS - 1, FIRST_DAYS + args.days):
            if day >= FIRST_DAYS:
                demo_data.write_batch(landing, day, n_rows=args.rows_per_day)
            new_batch = landing / demo_data.batch_file_name(day)
            run_id = f"scheduled__{demo_data.DEFAULT_START + dt.timedelta(days=day)}T02:00:00+00:00"
            before = tree(storage) if storage.exists() else {}
            started = time.perf_counter()
            snapshot = write_snapshot(
                spec,
                str(landing),
                str(snapshots / snapshot_key(run_id)),
                within=str(snapshots),
                run_id=run_id,
                store=str(model_root / STORE),
            )
            seconds = time.perf_counter() - started
            after = tree(storage)
            store = snapshot.batch_store()
            assert store is not None
            objects = {b.batch_hash for b in snapshot.batches if b.batch_hash}
            manifest = (snapshots / snapshot_key(run_id) / "manifest.json").stat().st_size
            per_run_copy = sum(os.path.getsize(str(store.object(d))) for d in objects) + manifest
            [new_hash] = {b.batch_hash for b in snapshot.batches if b.name == new_batch.name}
            stored_bytes = sum(size for path, (size, _) in after.items() if path.startswith(f"{spec_name}/{STORE}/"))
            landed_bytes = sum(p.stat().st_size for p in landing.iterdir() if p.is_file())
            runs.append(
                {
                    "run": len(runs),
                    "kind": "first" if not runs else "daily",
                    "new_batch": new_batch.name,
                    "new_batch_bytes": new_batch.stat().st_size,
                    "new_batch_parquet_bytes": os.path.getsize(str(store.object(str(new_hash)))),
                    "manifest_bytes": manifest,
                    "batches_in_snapshot": len(objects),
                    "bytes_written": written(before, after),
                    "bytes_written_per_run_copies": per_run_copy,
                    "storage_bytes": sum(size for size, _ in after.values()),
                    "store_bytes": stored_bytes,
                    "landed_bytes": landed_bytes,
                    "seconds": round(seconds, 3),
                }
            )
            print(json.dumps(runs[-1]), file=sys.stderr)
        previous_total = sum(r["bytes_written_per_run_copies"] for r in runs)

    daily = runs[1:]
    per_run = [r["bytes_written"] / r["new_batch_bytes"] for r in daily]
    per_run_parquet = [r["bytes_written"] / r["new_batch_parquet_bytes"] for r in daily]
    per_run_before = [r["bytes_written_per_run_copies"] / r["new_batch_bytes"] for r in daily]
    last = runs[-1]
    total = last["storage_bytes"] / last["landed_bytes"]
    total_before = previous_total / last["landed_bytes"]
    command = "uv run --frozen python benchmarks/storage.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v != parser.get_default(k)
    )
    result = {
        "command": command,
        "model": spec_name,
        "rows_per_day": args.rows_per_day,
        "daily_runs": args.days,
        "per_daily_run": {
            "median": round(statistics.median(per_run), 3),
            "max": round(max(per_run), 3),
            "goal": GOAL_PER_RUN,
            "per_run_copies_median": round(statistics.median(per_run_before), 3),
            "vs_new_batch_parquet_median": round(statistics.median(per_run_parquet), 3),
        },
        "total_after_daily_runs": {
            "ratio": round(total, 3),
            "goal": GOAL_TOTAL,
            "per_run_copies_ratio": round(total_before, 3),
            "storage_bytes": last["storage_bytes"],
            "landed_bytes": last["landed_bytes"],
        },
        "met": max(per_run) <= GOAL_PER_RUN and total <= GOAL_TOTAL,
        "runs": runs,
    }
    kib = 1024
    before_parquet = statistics.median(r["bytes_written_per_run_copies"] / r["new_batch_parquet_bytes"] for r in daily)
    new_parquet = statistics.median(r["new_batch_parquet_bytes"] for r in daily) / kib
    manifest_kib = statistics.median(r["manifest_bytes"] for r in daily) / kib
    step_s = statistics.median(r["seconds"] for r in daily)
    lines = [
        f"# Snapshot storage: a first run and {args.days} daily runs ({spec_name}, {args.rows_per_day:,} rows a day)",
        "",
        f"Command: `{command}`. Each run calls `write_snapshot` as the `snapshot` task does (batch store "
        "`<model>/batches/`, manifest under `<model>/snapshots/<key>/`); bytes written = files new or changed in "
        'the storage folder. "Per-run copies" = what the code before the batch store wrote: a Parquet copy of '
        "every batch in the window under each run's prefix (computed from the same runs' object sizes).",
        "",
        "| measure | batch store | per-run copies | goal |",
        "|---|---|---|---|",
        f"| bytes written per daily run / bytes of the new batch (median) | {result['per_daily_run']['median']} | "
        f"{result['per_daily_run']['per_run_copies_median']} | <= {GOAL_PER_RUN} |",
        f"| same, worst daily run | {result['per_daily_run']['max']} | {round(max(per_run_before), 3)} | "
        f"<= {GOAL_PER_RUN} |",
        f"| bytes written per daily run / Parquet bytes of the new batch (median) | "
        f"{result['per_daily_run']['vs_new_batch_parquet_median']} | "
        f"{round(before_parquet, 3)} | |",
        f"| storage bytes after {args.days} daily runs / landed bytes | {result['total_after_daily_runs']['ratio']} "
        f"| {result['total_after_daily_runs']['per_run_copies_ratio']} | <= {GOAL_TOTAL} |",
        "",
        f"Landed: {last['landed_bytes'] / kib:,.0f} KiB in {FIRST_DAYS + args.days} CSV files; storage after the "
        f"last run: {last['storage_bytes'] / kib:,.0f} KiB; first run wrote {runs[0]['bytes_written'] / kib:,.0f} "
        f"KiB; a daily run writes the new batch's Parquet object ({new_parquet:,.0f} KiB) "
        f"and its manifest ({manifest_kib:,.0f} KiB); the store "
        f"holds {last['store_bytes'] / kib:,.0f} KiB. Snapshot step {step_s:.2f} s per daily run (median).",
        "",
        f"Goals met: {'yes' if result['met'] else 'NO'}.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "storage.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "storage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
