"""``mlops``: the command line of mlops-airflow.

``mlops lint PATH...``
    Check model spec files (or every spec in a folder) as the DAG factory does: the same validation
    (:func:`mlops_airflow.core.config.load_model_spec`, with the file's folder as the models folder), then the
    model's DAGs are built. One line per error: file, line, key and the rule broken; exit status 1 on any.
``mlops status MODEL``
    Who serves the model, since when and why, whether that version is proven blessed, the last CT verdict and
    the last monitor run, read from MLflow (nothing is written). Exit status 1 when the champion is not proven
    blessed (it does not serve).
``mlops reproduce MODEL VERSION``
    Retrain a registered version from what it recorded (snapshot, spec, params, seed) in the scratch experiment
    ``MODEL/reproduce`` and say whether its predictions are identical, else how far apart and why
    (:mod:`mlops_airflow.core.reproduce`). Progress on stderr; ``--json`` for JSON.
``mlops replay MODEL --from DATE --to DATE --policy NAME...``
    Replay retrain policies over the model's landed history with the CT pipeline's functions and write a report
    (Markdown, JSON, PNG); no registry or storage is touched (:mod:`mlops_airflow.core.replay`). ``--log`` also
    logs the report to the MLflow experiment ``MODEL/replay``, where the model page lists it.
``mlops gc MODEL [--keep-runs N] [--dry-run]``
    Retention of the model's storage: keep the ``N`` newest snapshots (every one without ``--keep-runs``) and
    every snapshot a registered model version was trained on, and remove the stored batches none of them names
    and older than the grace period (:func:`mlops_airflow.core.batch_store.collect_garbage`). Safe beside
    running DAGs.

Importing this module does not import Airflow or MLflow: ``mlops lint --no-dags`` stays quick enough for a
pre-commit hook.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from mlops_airflow.core.config import MODELS_DIR_ENV, load_model_spec, read_spec_text, spec_files, twin_specs
from mlops_airflow.core.encoding import dumps
from mlops_airflow.core.errors import MlopsError
from mlops_airflow.core.spec import MODEL_NAME_RE, ModelSpec, ModelSpecError

#: A problem line of an "invalid model spec" message: ``  <key>: <rule>``.
_PROBLEM = re.compile(r"^  (\S+): (.*)$")
#: A dotted spec key (what a one-line spec error starts with, e.g. ``name: ...``).
_KEY = re.compile(r"^[A-Za-z_][\w.]*$")
#: The key of an error the DAG factory raises while building a valid spec's DAGs.
DAGS_KEY = "<dags>"


@dataclass(frozen=True)
class LintError:
    """One broken rule of one spec file; ``line`` is 1-based (the key's line, or the nearest enclosing one)."""

    file: str
    line: int
    key: str
    rule: str

    def __str__(self) -> str:
        rule = self.rule.replace("\n", "\n    ")
        return f"{self.file}:{self.line}: {self.key}: {rule}" if self.key else f"{self.file}:{self.line}: {rule}"


def problems(path: Path, error: ModelSpecError) -> list[tuple[str, str]]:
    """The ``(key, rule)`` pairs of a spec error, worded as :func:`~mlops_airflow.core.config.load_model_spec`
    worded them (the key is empty for an error of the whole file, such as YAML that does not parse)."""
    text = str(error).removeprefix(f"{path}: ")
    head, _, body = text.partition("\n")
    if head == "invalid model spec":
        found: list[list[str]] = []
        for line in body.splitlines():
            match = _PROBLEM.match(line)
            if match:
                found.append([match[1], match[2]])
            elif found:  # a rule worded on several lines
                found[-1][1] += "\n" + line
        return [(key, rule) for key, rule in found]
    key, sep, rule = text.partition(": ")
    return [(key, rule)] if sep and _KEY.match(key) else [("", text)]


def key_line(text: str, key: str) -> int:
    """The 1-based line of dotted ``key`` (list items by index, e.g. ``features.0.type``) in YAML ``text``: of
    its deepest part that is there (a missing key points at its parent); for text that does not parse, the
    line of the syntax error."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        return mark.line + 1 if mark else 1
    except (yaml.YAMLError, RecursionError):  # nested too deep to walk: the spec error names its line
        return 1
    line = 1 if node is None else node.start_mark.line + 1
    for part in key.split(".") if key and not key.startswith("<") else []:
        child = _child(node, part)
        if child is None:
            break
        line, node = child
    return line


def _child(node: Any, part: str) -> tuple[int, Any] | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == part:
                return key_node.start_mark.line + 1, value
    if isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
        item = node.value[int(part)]
        return item.start_mark.line + 1, item
    return None


@contextlib.contextmanager
def models_folder(folder: Path) -> Iterator[None]:
    """``folder`` as the models folder while a spec in it is checked, as ``model_dags(folder)`` makes it for the
    DAG file: transformer modules resolve under its parent (unless ``MLOPS_INCLUDE_DIR`` says otherwise)."""
    before = os.environ.get(MODELS_DIR_ENV)
    os.environ[MODELS_DIR_ENV] = str(folder.resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(MODELS_DIR_ENV, None)
        else:
            os.environ[MODELS_DIR_ENV] = before


def _spec_errors(path: Path, error: ModelSpecError) -> list[LintError]:
    try:
        text = read_spec_text(path)  # a FIFO, a device or a huge file is not read (again)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        text = ""
    return [LintError(str(path), key_line(text, key), key, rule) for key, rule in problems(path, error)]


def _dag_errors(path: Path, spec: ModelSpec) -> list[LintError]:
    """What the DAG factory raises while building the model's DAGs from a valid spec (in a DAG file, an
    import error that takes down every model of that file)."""
    from mlops_airflow import dag_factory

    errors = []
    for build in (
        dag_factory.build_ct_dag,
        dag_factory.build_monitor_dag,
        dag_factory.build_predict_dag,
        dag_factory.build_rollback_dag,
    ):
        try:
            build(spec)
        except Exception as err:  # any exception here is an import error of the user's DAG file
            errors.append(LintError(str(path), 1, DAGS_KEY, f"{build.__name__}: {type(err).__name__}: {err}"))
    return errors


def lint_file(path: Path, *, build_dags: bool = True) -> list[LintError]:
    """Every error of one spec file, as the DAG factory finds them (:func:`load_specs_tolerant`'s rules)."""
    with models_folder(path.parent):
        try:
            spec = load_model_spec(path)
        except ModelSpecError as err:
            return _spec_errors(path, err)
        except OSError as err:
            return _spec_errors(path, ModelSpecError(f"{path}: cannot be read: {err}"))
        return _dag_errors(path, spec) if build_dags else []


def lint_targets(paths: Sequence[Path]) -> tuple[list[Path], list[LintError]]:
    """The spec files named by ``paths`` (a folder stands for its ``*.yaml``/``*.yml``, as the factory reads it),
    and an error for a path that names none."""
    files: list[Path] = []
    errors: list[LintError] = []
    for path in paths:
        if path.is_dir():
            found = spec_files(path)
            files += found
            if not found:
                errors.append(LintError(str(path), 1, "", "no model spec (*.yaml, *.yml) in this folder"))
        elif path.exists():
            files.append(path)
        else:
            errors.append(LintError(str(path), 1, "", "no such file or folder"))
    return files, errors


def lint(paths: Sequence[Path], *, build_dags: bool = True) -> tuple[list[Path], list[LintError]]:
    """The files checked and every error found in them."""
    files, errors = lint_targets(paths)
    twins = twin_specs(files)
    for path in files:
        errors += _spec_errors(path, twins[path]) if path in twins else lint_file(path, build_dags=build_dags)
    return files, errors


def _cmd_lint(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    files, errors = lint(args.paths, build_dags=not args.no_dags)
    if args.format == "json":
        print(dumps({"files": [str(f) for f in files], "errors": [asdict(e) for e in errors]}, indent=2), file=out)
    else:
        for error in errors:
            print(error, file=out)
        bad = len({e.file for e in errors})
        summary = f"{len(errors)} error(s) in {bad} file(s)" if errors else "no errors"
        print(f"mlops lint: {len(files)} spec file(s) checked, {summary}", file=err)
    return 1 if errors else 0


# ------------------------------------------------------------------------------------------------ status


class StatusError(MlopsError, RuntimeError):
    """The status cannot be read (no spec, no store, a bad signing key); the message says which and where."""


def _client(tracking_uri: str) -> Any:
    from mlops_airflow.core.tracking import client_for

    if tracking_uri.startswith("sqlite:///"):
        store = Path(tracking_uri.removeprefix("sqlite:///"))
        if not store.is_file():  # MLflow would create an empty store there
            raise StatusError(f"no MLflow store at {store} (set MLFLOW_TRACKING_URI or pass --tracking-uri)")
    return client_for(tracking_uri)


def model_status(name: str, models_dir: Path | None, tracking_uri: str | None) -> Any:
    """:func:`mlops_airflow.core.ledger.model_status`, with the champion checked by the champion resolver
    (:func:`mlops_airflow.core.champion.resolve`) under this process's signing key, if it has one."""
    from dataclasses import replace

    from mlflow.exceptions import MlflowException

    from mlops_airflow.core import settings
    from mlops_airflow.core.champion import NoVersionError, UnblessedVersionError, resolve
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.core.ledger import model_status as read_status
    from mlops_airflow.core.signing import SigningKeyError, signing_key

    uri = tracking_uri or settings.default_tracking_uri()
    try:
        spec = get_spec(name, models_dir)
        client = _client(uri)
        st = read_status(client, spec.name, spec.primary)
        key = signing_key(uri, create=False)  # reading never creates the embedded default's key
    except (ModelSpecError, SigningKeyError, MlflowException) as error:
        raise StatusError(f"{name}: {error}") from None
    if st.champion is None:
        return st
    try:
        proof = resolve(client, spec.name, key).provenance
    except UnblessedVersionError as refusal:
        return replace(st, champion_refused=str(refusal))
    except NoVersionError:  # moved away while it was read
        return st
    except MlflowException as error:
        raise StatusError(f"{name}: {error}") from None
    return replace(st, champion_proof="signature" if proof.signed else "source run")


def status_lines(st: Any) -> list[str]:
    """The status as a person reads it: one ``label: value`` line per fact."""
    rows = [("model", st.name)]
    if st.champion is None:
        rows.append(("champion", "none yet (no version has been promoted)"))
    elif st.champion_refused:
        rows.append(("champion", f"v{st.champion}, NOT PROVEN BLESSED, does not serve: {st.champion_refused}"))
    else:
        rows.append(("champion", f"v{st.champion}, proven blessed by its {st.champion_proof}"))
    if st.champion is not None:
        rows.append(("since", f"{st.champion_since} ({st.champion_why})" if st.champion_since else "no record"))
    if st.unrecorded_move:
        rows.append(("warning", "champion was moved outside Airflow: the ledger's last move put it elsewhere"))
    if st.pinned:
        rows.append(("pinned", f"v{st.pinned}: no CT run moves champion until a rollback run unpins it"))
    for label, version in (("challenger", st.challenger), ("previous", st.previous_champion)):
        if version:
            rows.append((label, f"v{version}"))
    ct = st.last_ct
    rows.append(("last CT", f"{ct.started_at} ({ct.dag_id} {ct.run_id}): {ct.verdict}" if ct else "none"))
    rows.append(("last monitor", _monitor_text(st.last_monitor)))
    width = max(len(label) for label, _ in rows) + 1
    return [f"{label + ':':<{width}} {value}" for label, value in rows]


def _monitor_text(mon: Any) -> str:
    if mon is None:
        return "none"
    drift = "n/a" if mon.drift_share is None else f"{mon.drift_share:.2f}"
    features = f" ({', '.join(mon.drifted_features)})" if mon.drifted_features else ""
    live = "n/a" if mon.live_metric is None else f"{mon.live_metric:.4g}"
    retrain = f"retrain requested: {mon.retrain_reason}" if mon.retrain_requested else "no retrain requested"
    return f"{mon.started_at} on v{mon.champion_version}: drift share {drift}{features}, live metric {live}, {retrain}"


def _cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        st = model_status(args.model, args.models_dir, args.tracking_uri)
    except StatusError as error:
        print(f"mlops status: {error}", file=err)
        return 2
    if args.format == "json":
        print(dumps(st.to_dict(), indent=2), file=out)
    else:
        print("\n".join(status_lines(st)), file=out)
    return 1 if st.champion_refused else 0


# ------------------------------------------------------------------------------------------------ reproduce


def _cmd_reproduce(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Retrain a registered version from its records (:func:`mlops_airflow.core.reproduce.reproduce`); exit
    status 0 when identical, 1 when different, 2 when refused."""
    from mlflow.exceptions import MlflowException

    from mlops_airflow.core import settings
    from mlops_airflow.core.reproduce import ReproduceRefused, report_lines, reproduce

    def progress(line: str) -> None:
        print(f"mlops reproduce: {line}", file=err, flush=True)

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars among the progress

    try:
        client = _client(args.tracking_uri or settings.default_tracking_uri())
        result = reproduce(client, args.model, args.version, models_dir=args.models_dir, progress=progress)
    except (StatusError, ReproduceRefused, ModelSpecError, MlflowException) as error:
        print(f"mlops reproduce: refused: {error}", file=err)
        if args.format == "json":
            why = getattr(error, "reason", "cannot read")
            refusal = {"model": args.model, "version": args.version, "verdict": "refused", "reason": why}
            print(dumps({**refusal, "message": str(error)}, indent=2), file=out)
        return 2
    if args.format == "json":
        print(dumps(result.to_dict(), indent=2), file=out)
    else:
        print("\n".join(report_lines(result)), file=out)
    return 0 if result.identical else 1


# ------------------------------------------------------------------------------------------------ replay


def _cmd_replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Replay retrain policies over the model's landed history (:mod:`mlops_airflow.core.replay`); exit status
    2 when it cannot run."""
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.core.replay import ReplayError, render_markdown, run_and_report

    policies = [p for value in args.policy for p in value.split(",") if p]
    try:
        spec = get_spec(args.model, args.models_dir)
        result, paths = run_and_report(
            spec,
            args.start,
            args.end,
            policies,
            args.out or Path(f"replay-{args.model}"),
            label_delay_days=args.label_delay,
            history=args.history,
        )
    except (ReplayError, ModelSpecError, FileNotFoundError) as error:
        print(f"mlops replay: refused: {error}", file=err)
        return 2
    logged = None
    if args.log:
        import uuid

        from mlops_airflow.core import settings
        from mlops_airflow.core.replay import EXPERIMENT_SUFFIX, log_report

        try:
            client = _client(args.tracking_uri or settings.default_tracking_uri())
        except StatusError as error:
            print(f"mlops replay: the report is in {paths['md'].parent} but was not logged: {error}", file=err)
            return 2
        # a report of its own each time: nothing of the model's experiment, registry or aliases is touched
        tags = {"mlops.kind": "replay", "mlops.replay_source": "cli", "mlops.replay_id": uuid.uuid4().hex}
        logged = f"{args.model}{EXPERIMENT_SUFFIX} run {log_report(client, result, paths, tags)}"
    if args.format == "json":
        print(dumps(result, indent=2), file=out)
    else:
        print(render_markdown(result, None).split("## Policies")[0].rstrip(), file=out)
        print(f"report: {paths['md']}, {paths['json']}, {paths['png']}", file=out)
        if logged:
            print(f"logged to MLflow: experiment {logged}", file=out)
    return 0


# ------------------------------------------------------------------------------------------------ gc


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def gc_lines(report: Any, registered: dict[str, str | None]) -> list[str]:
    """A collection's report as a person reads it."""
    verb = "would remove" if report.dry_run else "removed"
    unknown = sorted((v for v, uri in registered.items() if not uri), key=int)
    return [
        f"storage: {report.model_root}" + (" (dry run: nothing removed)" if report.dry_run else ""),
        f"registered versions: {len(registered)}"
        + (f" ({len(unknown)} record no snapshot: v{', v'.join(unknown)})" if unknown else ""),
        f"snapshots: kept {len(report.kept_snapshots)}, kept for registered versions "
        f"{len(report.protected_snapshots)}, being written {len(report.in_progress)}, younger than the grace "
        f"period {len(report.young_snapshots)}, {verb} {len(report.removed_snapshots)}",
        f"batches: kept {report.kept_batches} ({_megabytes(report.kept_bytes)}), {verb} "
        f"{len(report.removed_batches)} ({_megabytes(report.removed_bytes)}), younger than the grace period "
        f"{len(report.young_batches)}; temporary files {verb} {len(report.removed_temporaries)}",
        *(f"warning: batch {d} is named by a kept snapshot but not stored" for d in report.missing_batches),
    ]


def _cmd_gc(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Retention of one model's storage (:func:`mlops_airflow.core.batch_store.collect_garbage`); exit status
    2 when what is in use cannot be read (nothing is removed then)."""
    from mlflow.exceptions import MlflowException

    from mlops_airflow.core import settings
    from mlops_airflow.core.batch_store import RetentionError, collect_garbage, registered_snapshots
    from mlops_airflow.core.landing import as_path

    if args.keep_runs is not None and args.keep_runs < 1:  # the newest may be the one a running DAG run reads
        print(f"mlops gc: --keep-runs {args.keep_runs}: must be 1 or more", file=err)
        return 2
    if not (math.isfinite(args.grace_hours) and args.grace_hours >= 0):  # NaN or < 0: no grace, in-flight lost
        print(f"mlops gc: --grace-hours {args.grace_hours}: must be a number of hours, 0 or more", file=err)
        return 2
    root = as_path(args.storage or settings.storage_base()) / args.model
    if not root.exists():
        print(f"mlops gc: {args.model}: no storage at {root} (set MLOPS_STORAGE_BASE or pass --storage)", file=err)
        return 2
    try:  # the registered versions first: without them nothing can be removed safely
        registered = registered_snapshots(_client(args.tracking_uri or settings.default_tracking_uri()), args.model)
        report = collect_garbage(
            root,
            keep_runs=args.keep_runs,
            protected=[u for u in registered.values() if u],
            grace_seconds=args.grace_hours * 3600,
            dry_run=args.dry_run,
        )
    except (StatusError, MlflowException, RetentionError) as error:
        print(f"mlops gc: {args.model}: {error}; nothing removed", file=err)
        return 2
    if args.format == "json":
        print(dumps({**report.to_dict(), "registered_versions": registered}, indent=2), file=out)
    else:
        print("\n".join(gc_lines(report, registered)), file=out)
    return 0


# ------------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    from mlops_airflow.provider import PACKAGE_NAME, distribution_version

    parser = argparse.ArgumentParser(
        prog="mlops",
        description="Command line of mlops-airflow: check model specs, read a model's status.",
        epilog="Run `mlops COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"{PACKAGE_NAME} {distribution_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    lint_cmd = sub.add_parser(
        "lint",
        help="check model spec files as the DAG factory does",
        description="Check model spec files as the DAG factory does: the spec rules, then building the model's "
        "DAGs. Prints FILE:LINE: KEY: RULE per error and exits with status 1 on any error.",
    )
    lint_cmd.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="a spec file, or a folder of *.yaml")
    lint_cmd.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    lint_cmd.add_argument(
        "--no-dags", action="store_true", help="check the spec rules only, without building DAGs (no Airflow import)"
    )
    status_cmd = sub.add_parser(
        "status",
        help="who serves a model, since when and why, the last CT verdict and monitor run",
        description="Read a model's status from MLflow: the champion (and whether it is proven blessed), since "
        "when and why, the last CT run's verdict and the last monitor run. Exit status 1 when the champion is not "
        "proven blessed, 2 when the status cannot be read.",
    )
    status_cmd.add_argument("model", help="the model's name (its spec file's stem)")
    status_cmd.add_argument(
        "--models-dir", type=Path, help=f"folder of the model specs (default: ${MODELS_DIR_ENV}, else include/models)"
    )
    status_cmd.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded local store)"
    )
    status_cmd.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    reproduce_cmd = sub.add_parser(
        "reproduce",
        help="retrain a registered version from its snapshot, spec and params; say whether it is identical",
        description="Retrain a registered model version with the spec, params and seed it recorded on the same "
        "snapshot rows, in the scratch MLflow experiment MODEL/reproduce (no version is registered, no alias "
        "moves), and compare both models' predictions on the evaluation rows. Exit status 0 when identical, 1 "
        "when different (with the likely cause), 2 when it cannot be done (e.g. the snapshot is gone).",
    )
    reproduce_cmd.add_argument("model", help="the registered model's name")
    reproduce_cmd.add_argument("version", help="the version to reproduce")
    reproduce_cmd.add_argument(
        "--models-dir", type=Path, help=f"folder of the model specs (default: ${MODELS_DIR_ENV}, else include/models)"
    )
    reproduce_cmd.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded local store)"
    )
    reproduce_cmd.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    reproduce_cmd.add_argument("--json", dest="format", action="store_const", const="json", help="--format json")
    gc_cmd = sub.add_parser(
        "gc",
        help="remove old snapshots and the stored batches no kept snapshot names",
        description="Retention of a model's storage: keep the N newest snapshots (all without --keep-runs) and "
        "every snapshot a registered MLflow model version was trained on; remove the other snapshots and the "
        "stored batches none of the kept ones names, once older than the grace period. Safe while DAGs run. "
        "Exit status 2 when the registered versions or a manifest cannot be read (nothing is removed).",
    )
    gc_cmd.add_argument("model", help="the model's name (its folder below the storage base)")
    gc_cmd.add_argument("--keep-runs", type=int, metavar="N", help="keep the N newest snapshots (default: all)")
    gc_cmd.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    gc_cmd.add_argument(
        "--grace-hours",
        type=float,
        default=24.0,
        help="leave batches and temporary files younger than this alone (default 24)",
    )
    gc_cmd.add_argument("--storage", help="storage base URI (default: $MLOPS_STORAGE_BASE, else under MLOPS_HOME)")
    gc_cmd.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded local store)"
    )
    gc_cmd.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    replay_cmd = sub.add_parser(
        "replay",
        help="replay retrain policies over a model's landed history (no registry; MLflow only with --log)",
        description="Replay retrain policies over the model's landed daily batches dated FROM to TO (earlier "
        "batches train the first champion) with the CT pipeline's functions, and write a report (Markdown, JSON, "
        "PNG) to --out. Reads the landing zone only; writes nothing to the registry or the model's storage, and "
        "to MLflow only with --log (the experiment MODEL/replay). Exit status 2 when it cannot run.",
    )
    replay_cmd.add_argument("model", help="the model's name (its spec file's stem)")
    replay_cmd.add_argument("--from", dest="start", required=True, metavar="DATE", help="first replayed day")
    replay_cmd.add_argument("--to", dest="end", required=True, metavar="DATE", help="last replayed day")
    replay_cmd.add_argument(
        "--policy",
        action="append",
        required=True,
        metavar="NAME",
        help="a policy (repeat or comma-separate): spec, never, always, nightly, weekly, weekly_triggers, triggers",
    )
    replay_cmd.add_argument(
        "--label-delay", type=int, metavar="DAYS", help="days until labels reach CT (default: label.delay_days)"
    )
    replay_cmd.add_argument("--history", help="landing folder to replay (default: the spec's source.uri)")
    replay_cmd.add_argument("--out", type=Path, help="report folder (default: ./replay-MODEL)")
    replay_cmd.add_argument(
        "--models-dir", type=Path, help=f"folder of the model specs (default: ${MODELS_DIR_ENV}, else include/models)"
    )
    replay_cmd.add_argument(
        "--log",
        action="store_true",
        help="also log the report to the MLflow experiment MODEL/replay (as replay_MODEL does; the model page lists "
        "it); never the model's own experiment, registry or aliases",
    )
    replay_cmd.add_argument(
        "--tracking-uri", help="with --log: MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local store)"
    )
    replay_cmd.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point of the ``mlops`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars in a command's output
    commands = {"lint": _cmd_lint, "status": _cmd_status, "reproduce": _cmd_reproduce, "gc": _cmd_gc}
    command = {**commands, "replay": _cmd_replay}[args.command]
    model = getattr(args, "model", None)
    if model is not None and not MODEL_NAME_RE.match(model):
        # a model's name is a spec file's stem and a folder of its storage: never a path out of either
        print(
            f"mlops {args.command}: {model!r} is not a model name "
            "(lower snake_case: a-z, 0-9, _, starting with a letter; at most 63 characters)",
            file=err or sys.stderr,
        )
        return 2
    return command(args, out or sys.stdout, err or sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
