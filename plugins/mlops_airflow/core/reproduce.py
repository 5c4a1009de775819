"""Reproduce a registered model version from what it recorded: the same code, data and model together.

A version records where its training data is and what it was (tags ``mlops.snapshot_uri`` and
``mlops.data_hash``), the code (``mlops.git_commit``) and its source run, the ``ct_<model>`` run that chose and
fitted it. That run records the chosen candidate (``mlops.selected_candidate``, params ``selected.*``), its
decision threshold, and, written by :func:`record_training_inputs` when the final model is fitted, the spec it
was trained with (:data:`SPEC_ARTIFACT`, tag :data:`TAG_SPEC_HASH`), the installed distributions
(:data:`ENVIRONMENT_ARTIFACT`, tag :data:`TAG_LOCK_HASH`) and a hash of the very rows it was fitted and
evaluated on (:data:`TAG_TRAIN_ROWS_HASH`, :data:`TAG_EVAL_ROWS_HASH`).

:func:`reproduce` retrains the same candidate with the same spec and params on the same snapshot rows (read
through :mod:`mlops_airflow.core.data`'s public functions, whatever the snapshot's storage format), scores
the snapshot's evaluation rows with both models and says whether the answers are identical, bit for bit; if
not, how far apart and the likely cause: the snapshot's rows, the spec, the params, the code commit, the
installed distributions, or an estimator without a seed. It logs one run to the scratch experiment
``<model>/reproduce`` (no logged model): it never registers a version or moves an alias.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops_airflow.core.config import candidate_grid, get_spec, parse_model_spec
from mlops_airflow.core.errors import MlopsError
from mlops_airflow.core.spec import ModelSpec, ModelSpecError

TAG_SPEC_HASH = "mlops.spec_hash"
TAG_LOCK_HASH = "mlops.lock_hash"
TAG_TRAIN_ROWS_HASH = "mlops.train_rows_hash"
TAG_EVAL_ROWS_HASH = "mlops.eval_rows_hash"
#: The spec the final model was trained with, as JSON (parses back to the same :class:`ModelSpec`).
SPEC_ARTIFACT = "spec/model_spec.json"
#: ``{distribution: version}`` of the training process: what :data:`TAG_LOCK_HASH` hashes.
ENVIRONMENT_ARTIFACT = "environment/distributions.json"
#: Experiment ``<model>`` + this: where reproductions are logged (never the model's own experiment).
EXPERIMENT_SUFFIX = "/reproduce"

if TYPE_CHECKING:
    import pandas as pd
#: Differing distributions named in a report (the rest are counted).
MAX_NAMED_DISTRIBUTIONS = 10


# ------------------------------------------------------------------------------------ what training records


def spec_record(spec: ModelSpec) -> dict[str, Any]:
    """The spec as JSON data that parses back to the same spec (:func:`~mlops_airflow.core.config.parse_model_spec`)."""
    return dict(spec.model_dump(mode="json", by_alias=True))


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def spec_hash(spec: ModelSpec) -> str:
    """SHA-256 of :func:`spec_record`: equal for specs that train alike, whatever their YAML layout."""
    return _digest(spec_record(spec))


def distributions() -> dict[str, str]:
    """The installed distributions of this process's environment, ``{normalised name: version}``."""
    from importlib.metadata import distributions as installed

    found: dict[str, str] = {}
    for dist in installed():
        # ``<name>-<version>.dist-info``: both read off the folder name (no METADATA file parsed per
        # distribution: about 0.4 s for 270 of them), the metadata only where the name does not say
        folder = getattr(dist, "_path", None)
        named = _DIST_INFO.match(folder.name) if folder is not None else None
        name, version = (named["name"], named["version"]) if named else (dist.metadata["Name"], dist.version)
        if name:
            found[re.sub(r"[-_.]+", "-", str(name)).lower()] = str(version)
    return dict(sorted(found.items()))


_DIST_INFO = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)\.dist-info$")


def lock_hash(versions: dict[str, str] | None = None) -> str:
    """SHA-256 of the installed distributions' versions (:func:`distributions`): the dependency lock as it was
    in force, which an installed package (no ``uv.lock`` beside it) also has."""
    return _digest(distributions() if versions is None else versions)


def rows_hash(frame: pd.DataFrame) -> str:
    """SHA-256 of a frame's column names and values, row by row (pandas' per-row hash; the index is not hashed)."""
    import pandas as pd

    digest = hashlib.sha256(json.dumps([str(c) for c in frame.columns]).encode())
    digest.update(np.ascontiguousarray(pd.util.hash_pandas_object(frame, index=False).to_numpy()).tobytes())
    return digest.hexdigest()


def training_tags(
    spec: ModelSpec, train: pd.DataFrame, evaluation: pd.DataFrame, versions: dict[str, str] | None = None
) -> dict[str, str]:
    """The tags :func:`record_training_inputs` sets (``versions``: :func:`distributions`, if already read)."""
    return {
        TAG_SPEC_HASH: spec_hash(spec),
        TAG_LOCK_HASH: lock_hash(versions),
        TAG_TRAIN_ROWS_HASH: rows_hash(train),
        TAG_EVAL_ROWS_HASH: rows_hash(evaluation),
    }


def record_training_inputs(
    client: Any, run_id: str, spec: ModelSpec, train: pd.DataFrame, evaluation: pd.DataFrame
) -> None:
    """Record on a CT run what :func:`reproduce` compares: the spec, the installed distributions and the hashes
    of the training and evaluation rows exactly as loaded for the final fit."""
    from mlops_airflow.core import tracking

    versions = distributions()  # about a second: read once
    tracking.log_json(client, run_id, spec_record(spec), SPEC_ARTIFACT)
    tracking.log_json(client, run_id, versions, ENVIRONMENT_ARTIFACT)
    for key, value in training_tags(spec, train, evaluation, versions).items():
        client.set_tag(run_id, key, value)


# ------------------------------------------------------------------------------------------- the report


class ReproduceRefused(MlopsError, RuntimeError):
    """The version cannot be reproduced (no such version, its snapshot or source run is gone, its snapshot's
    bytes changed); the message names what is missing or changed and where, ``reason`` says which in short."""

    def __init__(self, message: str, reason: str = "missing record") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Check:
    """One recorded input compared with the reproduction's: ``same`` is ``None`` when nothing was recorded."""

    name: str
    recorded: str | None
    now: str | None
    same: bool | None
    detail: str = ""


@dataclass
class Reproduction:
    """The outcome of :func:`reproduce` (``verdict``: ``identical`` or ``different``)."""

    model: str
    version: str
    verdict: str
    eval_rows: int
    rows_differing: int
    share_rows_differing: float
    labels_differing: int
    max_abs_diff: float
    deterministic: bool
    checks: list[Check]
    causes: list[str]
    notes: list[str]
    params: dict[str, Any]
    threshold: dict[str, float | None]
    metrics: dict[str, dict[str, float]]
    snapshot_uri: str
    source_run_id: str
    experiment: str
    run_id: str | None = None
    spec_source: str = ""

    @property
    def identical(self) -> bool:
        return self.verdict == "identical"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def report_lines(result: Reproduction) -> list[str]:
    """The reproduction as a person reads it."""
    lines = [f"{result.model} v{result.version}: {result.verdict.upper()}"]
    if result.identical:
        lines.append(f"  same predictions on all {result.eval_rows} evaluation rows, bit for bit")
    else:
        lines.append(
            f"  {result.rows_differing} of {result.eval_rows} evaluation rows differ "
            f"({result.share_rows_differing:.2%}), max abs diff {result.max_abs_diff:.3g}, "
            f"{result.labels_differing} predicted label(s) differ"
        )
        lines.append("  likely cause(s):")
        lines += [f"    - {cause}" for cause in result.causes]
    lines.append(f"  spec: {result.spec_source}")
    lines.append(f"  params: {result.params or 'defaults'}")
    lines.append("  inputs:")
    width = max(len(c.name) for c in result.checks) + 1
    for check in result.checks:
        state = "not recorded" if check.same is None else ("same" if check.same else "DIFFERS")
        detail = f" ({check.detail})" if check.detail else ""
        lines.append(f"    {check.name + ':':<{width}} {state}{detail}")
    for note in result.notes:
        lines.append(f"  note: {note}")
    lines.append(f"  snapshot: {result.snapshot_uri}")
    if result.run_id:
        lines.append(f"  logged to experiment {result.experiment!r}, run {result.run_id} (no version, no alias)")
    return lines


# ------------------------------------------------------------------------------------------- reproducing


def _short(value: str | None) -> str | None:
    return None if value is None else value[:12]


def _check(name: str, recorded: str | None, now: str | None, *, why: str = "", hashed: bool = False) -> Check:
    """``recorded`` against ``now``; a difference is detailed by ``why`` and both values (hashes shortened)."""
    same = None if not recorded else recorded == now
    detail = ""
    if same is False:
        shown = f"recorded {_short(recorded)}, now {_short(now)}" if hashed else f"recorded {recorded}, now {now}"
        detail = f"{why}; {shown}" if why else shown
    return Check(name, recorded, now, same, detail)


def _params_text(params: dict[str, Any]) -> str:
    return json.dumps({k: str(v) for k, v in params.items()}, sort_keys=True)


def _changed_distributions(recorded: dict[str, str], now: dict[str, str]) -> list[str]:
    changed = [
        f"{name} {recorded.get(name, '(absent)')} -> {now.get(name, '(absent)')}"
        for name in sorted(set(recorded) | set(now))
        if recorded.get(name) != now.get(name)
    ]
    if len(changed) > MAX_NAMED_DISTRIBUTIONS:
        changed = [*changed[:MAX_NAMED_DISTRIBUTIONS], f"and {len(changed) - MAX_NAMED_DISTRIBUTIONS} more"]
    return changed


def _spec_keys_differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _parse_param(text: str) -> Any:
    import yaml

    if text == "None":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def unseeded(spec: ModelSpec, params: dict[str, Any]) -> bool:
    """Whether the estimator takes a ``random_state`` and is given none: then two fits may differ."""
    from mlops_airflow.core.training import estimator_class

    cls = estimator_class(spec)
    try:
        accepted = cls().get_params()
    except Exception:  # an estimator that needs arguments to construct: cannot tell
        return False
    return "random_state" in accepted and {**spec.estimator.params, **params}.get("random_state") is None


def _scores_diff(spec: ModelSpec, original: pd.DataFrame, again: pd.DataFrame) -> dict[str, Any]:
    """How far two answers of the model on the same rows are apart: scores and predicted labels."""
    from mlops_airflow.core.scoring import output_scores

    a, b = output_scores(original, spec), output_scores(again, spec)
    same_bytes = a.shape == b.shape and a.tobytes() == b.tobytes()
    differs = ~((a == b) | (np.isnan(a) & np.isnan(b)))
    per_row = differs.any(axis=1) if differs.ndim == 2 else differs
    gap = np.abs(a - b)
    labels_a = original["prediction"].astype(str).to_numpy()
    labels_b = again["prediction"].astype(str).to_numpy()
    labels = int((labels_a != labels_b).sum())
    rows = len(per_row)
    return {
        "identical": bool(same_bytes and labels == 0),
        "rows_differing": int(per_row.sum()),
        "share_rows_differing": float(per_row.mean()) if rows else 0.0,
        "labels_differing": labels,
        "max_abs_diff": float(np.nanmax(gap)) if gap.size and not np.isnan(gap).all() else 0.0,
        "scores": (a, b),
    }


def reproduce(
    client: Any,
    name: str,
    version: str,
    *,
    models_dir: Path | str | None = None,
    progress: Callable[[str], None] = lambda line: None,
    log_run: bool = True,
) -> Reproduction:
    """Retrain ``name`` version ``version`` from its records and compare it with the registered model.

    :param models_dir: folder of the model specs (the current spec is compared with the recorded one, and used
        when the version recorded none).
    :param progress: called with one line per step.
    :param log_run: log the reproduction to experiment ``<name>/reproduce``.
    :raises ReproduceRefused: naming what is missing.
    """
    from mlflow.exceptions import MlflowException

    from mlops_airflow.core import settings, tracking
    from mlops_airflow.core.data import DataError, load_part, read_manifest
    from mlops_airflow.core.evaluation import Target, compute_metrics
    from mlops_airflow.core.landing import as_path
    from mlops_airflow.core.scoring import (
        encode_labels,
        load_model,
        model_config,
        model_input,
        model_threshold,
        predict_frame,
    )
    from mlops_airflow.core.served_model import model_output
    from mlops_airflow.core.training import fit_final, large_buffers_to_os, train_candidate

    progress(f"reading {name} version {version} from the registry")
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException as err:
        raise ReproduceRefused(f"{name} version {version}: not in the model registry ({err.error_code})") from None
    tags = dict(mv.tags or {})
    source_run_id = tags.get("mlops.mlflow_run_id") or mv.run_id
    if not source_run_id:
        raise ReproduceRefused(f"{name} v{version}: records no source run (tag mlops.mlflow_run_id, run_id)")
    try:
        run = client.get_run(source_run_id)
    except MlflowException:
        raise ReproduceRefused(f"{name} v{version}: its source run {source_run_id} is gone from MLflow") from None
    run_tags = dict(run.data.tags)

    # --- the spec: as recorded, else the models folder's
    recorded_spec = tracking.load_json(client, source_run_id, SPEC_ARTIFACT)
    try:
        current: ModelSpec | None = get_spec(name, models_dir)
    except ModelSpecError:
        current = None
    notes: list[str] = []
    if recorded_spec is not None:
        spec = parse_model_spec(recorded_spec, f"runs:/{source_run_id}/{SPEC_ARTIFACT}")
        spec_source = f"as recorded (run {source_run_id}, {SPEC_ARTIFACT})"
        if current is None:
            notes.append(f"no spec named {name!r} in the models folder now")
        elif spec_hash(current) != spec_hash(spec):
            keys = ", ".join(_spec_keys_differing(spec_record(spec), spec_record(current)))
            notes.append(f"the models folder's spec now differs from the recorded one in: {keys}")
    elif current is not None:
        spec = current
        spec_source = f"the models folder's current spec (the version recorded none: no {SPEC_ARTIFACT})"
    else:
        raise ReproduceRefused(
            f"{name} v{version}: no recorded spec ({SPEC_ARTIFACT} of run {source_run_id}) and no spec named "
            f"{name!r} in the models folder"
        )

    # --- the snapshot
    snapshot_uri = tags.get("mlops.snapshot_uri")
    if not snapshot_uri:
        raise ReproduceRefused(f"{name} v{version}: records no snapshot (version tag mlops.snapshot_uri)")
    progress(f"reading snapshot {snapshot_uri}")
    try:
        snapshot = read_manifest(as_path(snapshot_uri))
    except (OSError, ValueError) as err:
        raise ReproduceRefused(f"{name} v{version}: snapshot {snapshot_uri} cannot be read: {err}") from None
    if snapshot is None:
        raise ReproduceRefused(
            f"{name} v{version}: its snapshot is gone: no manifest at {snapshot_uri} (removed by retention, or "
            f"deleted); the data hash it recorded was {tags.get('mlops.data_hash') or '(none)'}",
            reason="snapshot gone",
        )
    columns = spec.input_columns
    try:
        evaluation = load_part(snapshot, "eval", columns)
        train = load_part(snapshot, "train", columns, spec.text_columns)
    except DataError as err:
        if getattr(err, "rule", None) == "batch_hash":  # the store checks each batch's bytes against its name
            raise ReproduceRefused(
                f"{name} v{version}: snapshot bytes changed since training, so the same rows cannot be read: {err}",
                reason="snapshot bytes changed",
            ) from None
        raise ReproduceRefused(
            f"{name} v{version}: snapshot {snapshot_uri} is incomplete, a part of it is gone: {err}",
            reason="snapshot gone",
        ) from None
    except OSError as err:
        raise ReproduceRefused(
            f"{name} v{version}: snapshot {snapshot_uri} is incomplete, a part of it is gone: {err}",
            reason="snapshot gone",
        ) from None

    # --- the candidate
    index_text = run_tags.get("mlops.selected_candidate")
    recorded_params = {k.removeprefix("selected."): v for k, v in run.data.params.items() if k.startswith("selected.")}
    grid = candidate_grid(spec)
    if index_text is not None and index_text.isdigit() and int(index_text) < len(grid):
        params = dict(grid[int(index_text)])
        if {k: str(v) for k, v in params.items()} != recorded_params:
            notes.append(f"candidate {index_text} of the spec's search space is not the recorded params: using those")
            params = {k: _parse_param(v) for k, v in recorded_params.items()}
    else:
        params = {k: _parse_param(v) for k, v in recorded_params.items()}

    large_buffers_to_os()
    progress(f"retraining candidate {index_text} ({params or 'defaults'}) on {len(train)} rows")
    candidate = train_candidate(spec, params, train)
    pipeline = fit_final(spec, params, train)
    recorded_threshold = run.data.metrics.get("decision_threshold")

    progress(f"scoring {len(evaluation)} evaluation rows with version {version} and the reproduction")
    original_model = load_model(f"models:/{name}/{version}")
    x = model_input(spec, evaluation)
    original = predict_frame(original_model, x)
    threshold = model_threshold(original_model)
    again = model_output(pipeline, x, model_config(spec, candidate.threshold, []))
    diff = _scores_diff(spec, original, again)
    target = Target.of(spec)
    y = encode_labels(spec, evaluation[spec.label.name])
    score_a, score_b = diff.pop("scores")
    metrics = {
        "registered": compute_metrics(target, y, score_a, threshold=threshold),
        "reproduced": compute_metrics(target, y, score_b, threshold=candidate.threshold),
    }

    # --- what may explain a difference
    now_versions = distributions()
    recorded_versions = tracking.load_json(client, source_run_id, ENVIRONMENT_ARTIFACT)
    lock_detail = ""
    if isinstance(recorded_versions, dict) and run_tags.get(TAG_LOCK_HASH) != lock_hash(now_versions):
        lock_detail = "; ".join(_changed_distributions(recorded_versions, now_versions))
    commit_now = settings.git_commit()
    checks = [
        _check(
            "snapshot manifest",
            tags.get("mlops.data_hash"),
            snapshot.content_hash,
            why="the snapshot's manifest names other landed bytes than the version recorded",
            hashed=True,
        ),
        _check("training rows", run_tags.get(TAG_TRAIN_ROWS_HASH), rows_hash(train), hashed=True),
        _check("evaluation rows", run_tags.get(TAG_EVAL_ROWS_HASH), rows_hash(evaluation), hashed=True),
        _check("spec", run_tags.get(TAG_SPEC_HASH), spec_hash(spec), hashed=True),
        _check("params", _params_text(recorded_params), _params_text(params)),
        _check(
            "decision threshold",
            None if recorded_threshold is None else repr(float(recorded_threshold)),
            repr(float(candidate.threshold)),
        ),
        _check("code commit", tags.get("mlops.git_commit"), commit_now, hashed=True),
        _check("dependency lock", run_tags.get(TAG_LOCK_HASH), lock_hash(now_versions), why=lock_detail, hashed=True),
    ]
    deterministic = not unseeded(spec, params)
    causes = _causes(checks, deterministic) if not diff["identical"] else []
    if diff["identical"]:
        notes += [f"{c.name} differs, yet the predictions are identical" for c in checks if c.same is False]
        if not deterministic:
            notes.append("the estimator takes a random_state and none is set: another fit may not agree")
    missing = [c.name for c in checks if c.same is None]
    if missing:
        notes.append(f"not recorded by this version, so not compared: {', '.join(missing)}")

    result = Reproduction(
        model=name,
        version=str(version),
        verdict="identical" if diff["identical"] else "different",
        eval_rows=len(evaluation),
        rows_differing=diff["rows_differing"],
        share_rows_differing=diff["share_rows_differing"],
        labels_differing=diff["labels_differing"],
        max_abs_diff=diff["max_abs_diff"],
        deterministic=deterministic,
        checks=checks,
        causes=causes,
        notes=notes,
        params=params,
        threshold={"registered": threshold, "reproduced": float(candidate.threshold)},
        metrics=metrics,
        snapshot_uri=snapshot_uri,
        source_run_id=source_run_id,
        experiment=name + EXPERIMENT_SUFFIX,
        spec_source=spec_source,
    )
    if log_run:
        progress(f"logging the reproduction to experiment {result.experiment!r}")
        result.run_id = _log(client, result, spec, params)
    return result


def _causes(checks: list[Check], deterministic: bool) -> list[str]:
    """The likely causes of a difference, most likely first."""
    words = {
        "snapshot manifest": "snapshot changed: its manifest's data hash differs from the version's",
        "training rows": "snapshot bytes changed: the training rows read now differ from those trained on",
        "evaluation rows": "snapshot bytes changed: the evaluation rows read now differ from those evaluated on",
        "spec": "spec changed: its hash differs from the one trained with",
        "params": "params differ from the recorded candidate's",
        "decision threshold": "the decision threshold chosen again differs from the recorded one",
        "code commit": "code commit differs from the one trained with",
        "dependency lock": "dependency lock differs (installed distributions' versions)",
    }
    causes = []
    for check in checks:
        if check.same is False:
            detail = f": {check.detail}" if check.detail else ""
            causes.append(words[check.name] + detail)
    if not deterministic:
        causes.append("the estimator takes a random_state and none is set: two fits may differ")
    if not causes:
        causes.append(
            "no recorded input differs: non-determinism in the estimator or its native libraries (threads, BLAS), "
            "or an input not recorded by this version"
        )
    return causes


def _log(client: Any, result: Reproduction, spec: ModelSpec, params: dict[str, Any]) -> str:
    """One run in the scratch experiment ``<model>/reproduce``: tags, params, metrics and the report."""
    from mlops_airflow.core import tracking

    exp = tracking.experiment_id(client, result.experiment)
    run = client.create_run(
        exp,
        run_name=f"reproduce-v{result.version}",
        tags={
            tracking.TAG_KIND: "reproduce",
            "mlops.model": result.model,
            "mlops.reproduce.version": result.version,
            "mlops.reproduce.source_run_id": result.source_run_id,
            "mlops.reproduce.verdict": result.verdict,
            "mlops.git_commit": next(c.now for c in result.checks if c.name == "code commit") or "",
            TAG_LOCK_HASH: next(c.now for c in result.checks if c.name == "dependency lock") or "",
            TAG_SPEC_HASH: spec_hash(spec),
        },
    )
    run_id = str(run.info.run_id)
    tracking.log_params(client, run_id, {**spec.estimator.params, **params})
    tracking.log_metrics(
        client,
        run_id,
        {
            "max_abs_diff": result.max_abs_diff,
            "share_rows_differing": result.share_rows_differing,
            "labels_differing": result.labels_differing,
            **{f"eval_{k}": v for k, v in result.metrics["reproduced"].items()},
        },
    )
    tracking.log_json(client, run_id, result.to_dict(), "reproduce/report.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id
