"""``ct_credit_default`` at scale against a bare pandas + scikit-learn script doing the same steps.

``uv run --frozen python benchmarks/scale.py [--rows-per-day 66667]`` generates the demo feed (15 daily batches
of ``--rows-per-day`` rows, CSV) in a private Airflow home and MLflow store, then alternates, each step in a
fresh process under ``/usr/bin/time -v`` (peak RSS):

1. the project, first run (no champion): ``dag.test()`` of ``ct_credit_default``;
2. the bare script on the same 15 files;
3. one more day lands; the bare script on the new window;
4. the project, second run (judged against run 1's champion).

The bare script reads the same files with ``pandas.read_csv``, checks the same rules as the GX suite with
pandas (columns, types, nulls, ranges, category sets, label set, row counts), fits the spec's grid of
candidates (the same preprocessing and estimator) on the 13 older training batches, chooses on the 14th by the
primary metric, refits the winner on all 14 and scores the newest batch. Nothing else: no tracking, no
registry, no gate; the ratio is what the project costs on top of the work itself.

With ``--executor`` the project also runs on the embedded default's LocalExecutor (``[core] parallelism`` =
cores, an ``airflow api-server`` for the task processes, each task a process of its own, the mapped
candidates side by side with ``cores // slots`` native threads each) in a second home on copies of the same
files, beside each ``dag.test()`` run.

Per-task walls come from the task instances in the subprocess's metadata DB; per-task peak RSS from a
sampler thread in the ``dag.test()`` process (every task runs in that one process, so a task's figure
includes what earlier tasks left allocated: an upper bound). XCom sizes from the XCom table.

Figures (see the issue "Scale"): P2 = project wall / bare wall (end to end, each run); P3 = ``validate_data``
wall / the bare final refit's wall; P4 = peak RSS / the training frame's in-memory size (the 14 training
batches as ``pandas.read_csv`` reads them, deep size) and the largest XCom. Results go to
``benchmarks/results/scale<--tag>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODEL = "credit_default"
DAG_ID = f"ct_{MODEL}"


# --------------------------------------------------------------------------------------------- environment
def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "MLOPS_HOME": str(home / "mlops"),
            "GX_ANALYTICS_ENABLED": "false",
        }
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def landing_of(home: Path) -> Path:
    return home / "mlops" / "data" / "landing" / MODEL


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd`` under ``/usr/bin/time -v``: its wall time, peak RSS and exit code."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        started = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", report.name, *cmd], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        text = Path(report.name).read_text()
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(int(match.group(1)) / 1024, 1) if match else None,
        "returncode": proc.returncode,
        "stdout_tail": proc.stdout.strip().splitlines()[-1:] if proc.stdout else [],
    }


# --------------------------------------------------------------------------------------------- project
class RssSampler(threading.Thread):
    """The process's resident set size every ``interval`` seconds, with wall-clock timestamps."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self.stopped.is_set():
            with open("/proc/self/statm") as fh:
                rss = int(fh.read().split()[1]) * page
            self.samples.append((time.time(), rss))
            self.stopped.wait(self.interval)

    def peak_between(self, start: float, end: float) -> int | None:
        values = [rss for t, rss in self.samples if start <= t <= end]
        return max(values) if values else None


def run_project(out: Path, use_executor: bool = False) -> None:
    """Child process: one ``dag.test()`` of the CT DAG; per-task walls, peak RSS and XCom sizes to ``out``.

    ``use_executor``: the tasks go to the LocalExecutor of the environment (``AIRFLOW__CORE__PARALLELISM``
    worker processes, each task a process of its own), as under ``make up``; the driver runs the api-server
    they report to. Otherwise every task runs in this process, one after the other.
    """
    sampler = RssSampler()
    sampler.start()
    from mlops_airflow.dag_factory import build_dags

    dag = build_dags()[DAG_ID]
    # Executor workers load the DAG from the file that defines it in the DAGs folder (as the scheduler
    # parsed it), not from the factory module that built it.
    dag.fileloc = str(REPO / "dags" / "mlops_dags.py")
    started = time.perf_counter()
    dag_run = dag.test(use_executor=use_executor)
    wall = time.perf_counter() - started
    sampler.stopped.set()

    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    tasks: dict[str, Any] = {}
    xcoms: dict[str, int] = {}
    with create_session() as session:
        for ti in session.query(TaskInstance).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
        ):
            if not (ti.start_date and ti.end_date):
                continue
            key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
            peak = None if use_executor else sampler.peak_between(ti.start_date.timestamp(), ti.end_date.timestamp())
            tasks[key] = {
                "wall_s": round((ti.end_date - ti.start_date).total_seconds(), 2),
                "start": ti.start_date.timestamp(),
                "end": ti.end_date.timestamp(),
                "state": str(ti.state),
                "peak_rss_mb": round(peak / 2**20, 1) if peak else None,
            }
        for row in session.query(XComModel).filter(
            XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id
        ):
            name = row.task_id if row.map_index < 0 else f"{row.task_id}[{row.map_index}]"
            xcoms[f"{name}:{row.key}"] = len(json.dumps(row.value, default=str).encode())
    out.write_text(
        json.dumps(
            {"state": str(dag_run.state), "dag_test_wall_s": round(wall, 2), "tasks": tasks, "xcom_bytes": xcoms}
        )
    )


# --------------------------------------------------------------------------------------------- bare
def run_bare(landing: Path, out: Path) -> None:
    """Child process: the same steps as the CT DAG's data and training path, in plain pandas + sklearn."""
    import itertools

    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from mlops_airflow.core.config import get_spec

    spec = get_spec(MODEL)
    steps: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        steps[name] = round(now - clock, 2)
        clock = now

    files = sorted(p for p in landing.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
    window = files[-(spec.window.train_batches + spec.window.eval_batches) :]
    frames = [pd.read_csv(p) for p in window]
    lap("read")

    # The GX suite's rules, in pandas.
    problems: list[str] = []
    label = spec.label.name
    for name, frame in zip((p.name for p in window), frames, strict=True):
        if len(frame) < 1:
            problems.append(f"{name}: empty")
        for feat in spec.features:
            if feat.name not in frame.columns:
                problems.append(f"{name}: {feat.name} missing")
                continue
            col = frame[feat.name]
            if feat.type == "numeric" and not pd.api.types.is_numeric_dtype(col):
                problems.append(f"{name}: {feat.name} not numeric")
            if feat.type == "categorical" and not (
                pd.api.types.is_object_dtype(col) or isinstance(col.dtype, pd.CategoricalDtype)
            ):
                problems.append(f"{name}: {feat.name} not text")
            nulls = col.isna().mean()
            if nulls > (feat.max_null_fraction if feat.nullable else 0.0):
                problems.append(f"{name}: {feat.name} null fraction {nulls}")
            values = col.dropna()
            if feat.min is not None and (values < feat.min).any():
                problems.append(f"{name}: {feat.name} below min")
            if feat.max is not None and (values > feat.max).any():
                problems.append(f"{name}: {feat.name} above max")
            if feat.categories is not None and not values.isin(feat.categories).all():
                problems.append(f"{name}: {feat.name} outside set")
        if spec.source.timestamp_column not in frame.columns or frame[spec.source.timestamp_column].isna().any():
            problems.append(f"{name}: timestamp missing")
        if frame[label].isna().any() or not pd.api.types.is_integer_dtype(frame[label]):
            problems.append(f"{name}: label nulls or type")
        if not frame[label].isin(list(spec.label.values or [])).all():
            problems.append(f"{name}: label outside set")
    if problems:
        raise SystemExit("\n".join(problems))
    lap("validate")

    train = pd.concat(frames[: spec.window.train_batches], ignore_index=True)
    newest = frames[-1]
    train_frame_mb = train.memory_usage(deep=True).sum() / 2**20
    numeric = spec.numeric_features
    categorical = spec.categorical_features
    features = numeric + categorical
    fit_rows = train.iloc[: -len(frames[spec.window.train_batches - 1])]
    valid_rows = train.iloc[-len(frames[spec.window.train_batches - 1]) :]

    def pipeline(params: dict[str, Any]) -> Pipeline:
        pre = ColumnTransformer(
            [
                (
                    n,
                    Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]),
                    [n],
                )
                for n in numeric
            ]
            + [
                (
                    n,
                    Pipeline(
                        [
                            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                            ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                        ]
                    ),
                    [n],
                )
                for n in categorical
            ]
        )
        model = HistGradientBoostingClassifier(**{**spec.estimator.params, **params})
        return Pipeline([("preprocess", pre), ("model", model)])

    def inputs(rows: pd.DataFrame) -> pd.DataFrame:
        x = rows[features].astype({n: "float64" for n in numeric})
        return x.astype({n: "object" for n in categorical})

    grid = spec.estimator.search_space or {}
    names = sorted(grid)
    candidates = [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]
    scores = []
    for params in candidates:
        fitted = pipeline(params).fit(inputs(fit_rows), fit_rows[label])
        scores.append(roc_auc_score(valid_rows[label], fitted.predict_proba(inputs(valid_rows))[:, 1]))
    best = candidates[int(np.argmax(scores))]
    lap("candidates")
    final = pipeline(best).fit(inputs(train), train[label])
    lap("refit")
    auc = roc_auc_score(newest[label], final.predict_proba(inputs(newest))[:, 1])
    lap("score")
    out.write_text(
        json.dumps(
            {
                "steps_s": steps,
                "candidates": len(candidates),
                "best": best,
                "eval_roc_auc": round(float(auc), 4),
                "train_rows": len(train),
                "train_frame_mb": round(train_frame_mb, 1),
            }
        )
    )


# --------------------------------------------------------------------------------------------- driver
def executor_env(env: dict[str, str], port: int) -> dict[str, str]:
    """The embedded default's LocalExecutor: one task slot per core, tasks reporting to a local api-server."""
    import secrets

    return {
        **env,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(os.cpu_count() or 2),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": env.get("AIRFLOW__API_AUTH__JWT_SECRET") or secrets.token_hex(32),
        "AIRFLOW__API__WORKERS": "1",
    }


class ApiServer:
    """``airflow api-server`` on a free loopback port, for the executor's task processes."""

    def __init__(self, env: dict[str, str]) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.env = executor_env(env, self.port)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ApiServer:
        import urllib.request

        cmd = [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v2/monitor/health", timeout=2)
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("api-server exited") from None
                time.sleep(1)
        raise RuntimeError("api-server did not start in 180 s")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def child(kind: str, home: Path, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    extra = [str(landing_of(home))] if kind == "bare" else []
    if kind == "project-executor":
        with ApiServer(env) as server:
            proc = timed([sys.executable, __file__, "_project", str(out), "--use-executor"], server.env)
        detail = json.loads(out.read_text()) if out.stat().st_size else {}
        out.unlink()
        return {**proc, **detail}
    proc = timed([sys.executable, __file__, f"_{kind}", str(out), *extra], env)
    detail = json.loads(out.read_text()) if out.stat().st_size else {}
    out.unlink()
    return {**proc, **detail}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def summarise(label: str, project: dict[str, Any], bare: dict[str, Any]) -> dict[str, Any]:
    tasks = project.get("tasks", {})
    refit = bare["steps_s"]["refit"]
    train_mb = bare["train_frame_mb"]
    peaks = [t["peak_rss_mb"] for t in tasks.values() if t.get("peak_rss_mb")]
    return {
        "label": label,
        "project": project,
        "bare": bare,
        "P2_wall_ratio": ratio(project["wall_s"], bare["wall_s"]),
        "P3_validate_over_refit": ratio(tasks.get("validate_data", {}).get("wall_s"), refit),
        "P4_peak_rss_over_train_frame": ratio(project["peak_rss_mb"], train_mb),
        "P4_task_peak_rss_mb": max(peaks) if peaks else None,
        "max_xcom_bytes": max(project.get("xcom_bytes", {}).values(), default=0),
    }


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    lines = [
        f"# Scale: `{DAG_ID}` at {result['rows_per_day']:,} rows/day "
        f"({result['total_rows']:,} rows in 15 batches), {result['cores']} cores",
        "",
        f"Command: `{result['command']}`  ",
        f"Training frame (14 batches as `pandas.read_csv` reads them): {runs[0]['bare']['train_frame_mb']} MB, "
        f"{runs[0]['bare']['train_rows']:,} rows.",
        "",
        "| figure | " + " | ".join(r["label"] for r in runs) + " | goal |",
        "|---|" + "---|" * len(runs) + "---|",
    ]
    rows = [
        ("project wall s (process)", lambda r: r["project"]["wall_s"], ""),
        ("bare wall s (process)", lambda r: r["bare"]["wall_s"], ""),
        ("**P2** project / bare", lambda r: r["P2_wall_ratio"], "<= 1.25 (1M), <= 1.5 (10M)"),
        ("validate_data s", lambda r: r["project"]["tasks"].get("validate_data", {}).get("wall_s"), ""),
        ("bare final refit s", lambda r: r["bare"]["steps_s"]["refit"], ""),
        ("**P3** validate_data / refit", lambda r: r["P3_validate_over_refit"], "<= 0.25"),
        ("project peak RSS MB", lambda r: r["project"]["peak_rss_mb"], ""),
        ("bare peak RSS MB", lambda r: r["bare"]["peak_rss_mb"], ""),
        ("**P4** project peak RSS / training frame", lambda r: r["P4_peak_rss_over_train_frame"], "<= 2.5"),
        ("largest XCom bytes", lambda r: r["max_xcom_bytes"], "< 4096"),
    ]
    for title, get, goal in rows:
        lines.append(f"| {title} | " + " | ".join(str(get(r)) for r in runs) + f" | {goal} |")
    lines += ["", "Per task (wall s / peak RSS MB of the `dag.test()` process while the task ran):", ""]
    lines.append("| task | " + " | ".join(r["label"] for r in runs) + " |")
    lines.append("|---|" + "---|" * len(runs))
    names: list[str] = []
    for r in runs:
        names += [n for n in r["project"].get("tasks", {}) if n not in names]
    for name in names:
        cells = []
        for r in runs:
            t = r["project"].get("tasks", {}).get(name)
            cells.append(f"{t['wall_s']} / {t['peak_rss_mb']}" if t else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Bare script steps (s):", "", "| step | " + " | ".join(r["label"] for r in runs) + " |"]
    lines.append("|---|" + "---|" * len(runs))
    for step in runs[0]["bare"]["steps_s"]:
        lines.append(f"| {step} | " + " | ".join(str(r["bare"]["steps_s"].get(step)) for r in runs) + " |")
    lines += ["", "Mapped `train` tasks (4 candidates):", "", "| run | sum of task walls s | train phase wall s |"]
    lines.append("|---|---|---|")
    for r in runs:
        mapped = [t for n, t in r["project"].get("tasks", {}).items() if n.startswith("train[")]
        if mapped:
            phase = max(t["end"] for t in mapped) - min(t["start"] for t in mapped)
            lines.append(f"| {r['label']} | {sum(t['wall_s'] for t in mapped):.1f} | {phase:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows-per-day", type=int, default=66_667)
    parser.add_argument("--tag", default="", help="results file suffix: scale<tag>.json")
    parser.add_argument("--first-run-only", action="store_true", help="skip the run with a champion")
    parser.add_argument("--keep", action="store_true", help="keep the private home (its path is printed)")
    parser.add_argument(
        "--executor",
        action="store_true",
        help="also run the project on the LocalExecutor (one slot per core, mapped candidates side by side) "
        "in a second home on the same files, beside each dag.test() run",
    )
    args = parser.parse_args()

    from mlops_airflow.core import demo_data

    home = Path(tempfile.mkdtemp(prefix="mlops-scale-"))
    homes = {"dag.test()": home}
    if args.executor:
        homes["LocalExecutor"] = Path(tempfile.mkdtemp(prefix="mlops-scale-executor-"))
    print(f"home(s) {[str(h) for h in homes.values()]}", flush=True)
    for each in homes.values():  # both stores exist before the first run, as ``make airflow-db`` makes them
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"], env=env_for(each), check=True, capture_output=True
        )
        (each / "mlops" / "mlflow").mkdir(parents=True, exist_ok=True)
        store = f"sqlite:///{each / 'mlops' / 'mlflow' / 'mlflow.db'}"
        subprocess.run(
            [sys.executable, "-m", "mlflow", "db", "upgrade", store], env=env_for(each), check=True, capture_output=True
        )
    started = time.perf_counter()
    demo_data.write_batches(landing_of(home), range(15), n_rows=args.rows_per_day)
    print(f"generated 15 x {args.rows_per_day:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
    if args.executor:
        import shutil

        shutil.copytree(landing_of(home), landing_of(homes["LocalExecutor"]))

    def project_run(mode: str, number: int) -> dict[str, Any]:
        kind = "project" if mode == "dag.test()" else "project-executor"
        project = child(kind, homes[mode], env_for(homes[mode]))
        print(f"project run {number} ({mode}): {project['wall_s']} s, {project['peak_rss_mb']} MB", flush=True)
        return project

    # Alternating: project, bare, [project on the executor]; then the same in reverse order after a day lands.
    modes = list(homes)
    runs = []
    first = {modes[0]: project_run(modes[0], 1)}
    bare = child("bare", home, env_for(home))
    print(f"bare run 1: {bare['wall_s']} s, {bare['peak_rss_mb']} MB", flush=True)
    for mode in modes[1:]:
        first[mode] = project_run(mode, 1)
    runs += [summarise(f"run 1 (first), {mode}", first[mode], bare) for mode in modes]
    if not args.first_run_only:
        for each in homes.values():
            demo_data.write_batch(landing_of(each), 15, n_rows=args.rows_per_day)
        second = {mode: project_run(mode, 2) for mode in modes[1:]}
        bare = child("bare", home, env_for(home))
        print(f"bare run 2: {bare['wall_s']} s, {bare['peak_rss_mb']} MB", flush=True)
        second[modes[0]] = project_run(modes[0], 2)
        runs += [summarise(f"run 2 (vs champion), {mode}", second[mode], bare) for mode in modes]

    command = "uv run --frozen python benchmarks/scale.py" + "".join(
        f" {a}" for a in sys.argv[1:] if not a.startswith("--keep")
    )
    result = {
        "model": MODEL,
        "rows_per_day": args.rows_per_day,
        "total_rows": 15 * args.rows_per_day,
        "cores": os.cpu_count(),
        "command": command,
        "completed": all(r["project"].get("state") == "success" for r in runs),
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"scale{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"scale{args.tag}.md").write_text(markdown(result))
    print(markdown(result))
    if not args.keep:
        import shutil

        for each in homes.values():
            shutil.rmtree(each, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_project":
        run_project(Path(sys.argv[2]), use_executor="--use-executor" in sys.argv)
    elif len(sys.argv) > 1 and sys.argv[1] == "_bare":
        run_bare(Path(sys.argv[3]), Path(sys.argv[2]))
    else:
        main()
