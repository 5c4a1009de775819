"""MLflow tracking: one parent run per CT DAG run, nested runs per candidate, found again on retry.

Runs are located by their Airflow tags, never created twice: a retried or cleared task finds the run of
its DAG run (``airflow.dag_id`` + ``airflow.run_id``) and goes on logging into it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from mlops_airflow.core import settings
from mlops_airflow.core.encoding import dumps, jsonable
from mlops_airflow.core.errors import ArtifactError

TAG_DAG_ID = "airflow.dag_id"
TAG_RUN_ID = "airflow.run_id"
TAG_KIND = "mlops.kind"
TAG_CANDIDATE = "mlops.candidate_index"
PARENT_TAG = "mlflow.parentRunId"


# MLflow's HTTP client retries a dead server for about 4 minutes per request (7 retries, backoff factor 2,
# 120 s timeout): a task try would hang that long before Airflow's own retries (with backoff) take over.
# These bounds fail a try within a minute even against a server that accepts and never answers
# (3 attempts x 15 s + backoff 0 + 2 s); a refused connection fails in about 3 s. A deployment may set
# other values in the environment; these are only defaults.
HTTP_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


def bound_http_retries() -> dict[str, str]:
    """Set :data:`HTTP_CLIENT_DEFAULTS` where the environment has no value; the settings now in force."""
    for key, value in HTTP_CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in HTTP_CLIENT_DEFAULTS}


def client_for(tracking_uri: str) -> MlflowClient:
    """A client bound to ``tracking_uri`` (also set as the process default for the fluent API).

    MLflow reads its HTTP retry and timeout settings from the environment on every request, so
    :func:`bound_http_retries` sets them for this process (and the subprocesses it starts).
    """
    bound_http_retries()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's id, created on first use (with local artifacts when the store is a file DB)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if not str(client.tracking_uri).startswith("http"):
        location = f"{settings.default_artifact_root()}/{name}"
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except mlflow.exceptions.MlflowException:  # created concurrently by another task
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def find_run(client: MlflowClient, exp_id: str, tags: dict[str, str]) -> Any | None:
    """The one run carrying all ``tags`` (the oldest if a race ever made two)."""
    query = " and ".join(f"tags.`{k}` = '{_quote(v)}'" for k, v in tags.items())
    runs = client.search_runs([exp_id], filter_string=query, order_by=["attributes.start_time ASC"])
    return runs[0] if runs else None


def get_or_create_run(
    client: MlflowClient,
    exp_id: str,
    key_tags: dict[str, str],
    extra_tags: dict[str, str] | None = None,
    run_name: str | None = None,
) -> str:
    """Id of the run identified by ``key_tags``; created (with ``extra_tags``) if it does not exist."""
    run = find_run(client, exp_id, key_tags)
    if run is not None:
        return str(run.info.run_id)
    created = client.create_run(exp_id, tags={**key_tags, **(extra_tags or {})}, run_name=run_name)
    return str(created.info.run_id)


def parent_run_id(client: MlflowClient, exp_id: str, dag_id: str, run_id: str) -> str | None:
    run = find_run(client, exp_id, {TAG_DAG_ID: dag_id, TAG_RUN_ID: run_id, TAG_KIND: "ct"})
    return None if run is None else str(run.info.run_id)


def run_url(exp_id: str, run_id: str) -> str:
    return f"{settings.mlflow_ui_url()}/#/experiments/{exp_id}/runs/{run_id}"


def model_url(name: str, version: str | int) -> str:
    return f"{settings.mlflow_ui_url()}/#/models/{name}/versions/{version}"


TAG_VERDICT = "mlops.verdict"
TAG_AIRFLOW_URL = "mlops.airflow_url"


def source_tags(airflow_url: str) -> dict[str, str]:
    """Tags that make the MLflow run's "Source" the Airflow DAG run that wrote it."""
    return {"mlflow.source.name": airflow_url, "mlflow.source.type": "JOB", TAG_AIRFLOW_URL: airflow_url}


def record_verdict(client: MlflowClient, run_id: str, verdict: str, detail: str) -> None:
    """The CT run's outcome where the MLflow UI shows it: tag ``mlops.verdict`` (a column of the runs list)
    and the run's description (one line: trigger and verdict, then the detail and the Airflow run)."""
    tags = client.get_run(run_id).data.tags
    trigger = tags.get("mlops.trigger", "manual")
    note = f"**{trigger}** run: **{verdict}**. {detail}"
    if tags.get(TAG_AIRFLOW_URL):
        note += f"\n\nAirflow run: {tags[TAG_AIRFLOW_URL]}"
    client.set_tag(run_id, TAG_VERDICT, verdict)
    client.set_tag(run_id, "mlflow.note.content", note[:5000])


def log_json(client: MlflowClient, run_id: str, data: Any, artifact_file: str) -> None:
    """Log ``data`` as strict JSON (:func:`~mlops_airflow.core.encoding.dumps`: an undefined metric is ``null``,
    never ``NaN``); a ``.yaml``/``.yml`` file as YAML of the same values."""
    if artifact_file.endswith((".yaml", ".yml")):
        client.log_dict(run_id, jsonable(data), artifact_file)
        return
    client.log_text(run_id, dumps(data, indent=2), artifact_file)


#: Largest JSON or text artifact read back from a run (reports, comparisons, estimates, recorded specs):
#: anyone who may write to the tracking server may log any file under a run's known paths.
MAX_ARTIFACT_BYTES = 16 * 1024 * 1024
#: Largest Markdown artifact the model page renders (the gate report).
MAX_REPORT_BYTES = 1024 * 1024
#: Largest plot the model page serves (a PNG of ``drift/plots`` or ``evaluation``).
MAX_IMAGE_BYTES = 8 * 1024 * 1024


def _checked_path(run_id: str, path: str) -> str:
    """``path`` when it names a file inside the run's artifacts (relative, no ``..``, no empty part)."""
    parts = path.split("/")
    if not path or "\\" in path or "\x00" in path or any(p in ("", ".", "..") for p in parts):
        raise ArtifactError(run_id, path, "is not a relative path inside the run's artifacts")
    return path


def _read_capped(
    run_id: str,
    path: str,
    max_bytes: int,
    listing: Callable[[str], Any],
    download: Callable[[str, str], str],
    store_errors: bool = False,
) -> bytes | None:
    """The artifact's bytes: listed in its folder first (absent: None; listed larger than ``max_bytes``:
    refused before any download), then measured again on disk before it is read into memory. A store that
    cannot be read gives None, or raises its ``MlflowException`` when ``store_errors``."""
    from mlflow.exceptions import MlflowException

    path = _checked_path(run_id, path)
    folder = path.rpartition("/")[0]
    try:
        listed = {f.path.rstrip("/"): f for f in listing(folder)}
    except (MlflowException, OSError):
        if store_errors:
            raise
        return None
    entry = listed.get(path)
    if entry is None or entry.is_dir:
        return None
    too_large = f"is larger than the {max_bytes} bytes the package reads"
    if entry.file_size is not None and int(entry.file_size) > max_bytes:
        raise ArtifactError(run_id, path, f"{too_large} (listed at {int(entry.file_size)} bytes)")
    with tempfile.TemporaryDirectory() as scratch:
        try:
            local = Path(download(path, scratch))
            size = local.stat().st_size
            if size > max_bytes:  # the listing gave no size, or a smaller one than what was downloaded
                raise ArtifactError(run_id, path, f"{too_large} (downloaded {size} bytes)")
            with local.open("rb") as handle:
                data = handle.read(max_bytes + 1)
        except (MlflowException, OSError):
            if store_errors:
                raise
            return None
    if len(data) > max_bytes:  # grew while being read
        raise ArtifactError(run_id, path, f"{too_large} (read more)")
    return data


def read_artifact_bytes(
    client: MlflowClient,
    run_id: str,
    path: str,
    max_bytes: int = MAX_ARTIFACT_BYTES,
    *,
    artifact_uri: str | None = None,
    store_errors: bool = False,
) -> bytes | None:
    """The file ``path`` of run ``run_id``'s artifacts, ``None`` when the run has none there (or the store
    cannot be read; with ``store_errors`` its ``MlflowException`` or ``OSError`` is raised instead).
    ``artifact_uri``: the run's artifact URI when a search already answered it (the file is then listed and
    downloaded through it: no call for the run itself).

    :raises ArtifactError: the file is larger than ``max_bytes`` (by its listed size, before any download, or
        by its downloaded size), or ``path`` is not a relative path inside the run's artifacts.
    """
    if artifact_uri is None:
        return _read_capped(
            run_id,
            path,
            max_bytes,
            lambda folder: client.list_artifacts(run_id, folder or None),
            lambda file, dst: client.download_artifacts(run_id, file, dst),
            store_errors,
        )
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(artifact_uri, tracking_uri=str(client.tracking_uri))
    return _read_capped(
        run_id,
        path,
        max_bytes,
        lambda folder: repo.list_artifacts(folder or None),
        repo.download_artifacts,
        store_errors,
    )


def read_artifact_text(
    client: MlflowClient,
    run_id: str,
    path: str,
    max_bytes: int = MAX_ARTIFACT_BYTES,
    *,
    artifact_uri: str | None = None,
    store_errors: bool = False,
) -> str | None:
    """:func:`read_artifact_bytes` as UTF-8 text. :raises ArtifactError: over the cap, or not UTF-8."""
    data = read_artifact_bytes(client, run_id, path, max_bytes, artifact_uri=artifact_uri, store_errors=store_errors)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ArtifactError(run_id, path, f"is not UTF-8 text (byte {err.start}: {err.reason})") from None


def read_artifact_json(
    client: MlflowClient,
    run_id: str,
    path: str,
    max_bytes: int = MAX_ARTIFACT_BYTES,
    *,
    artifact_uri: str | None = None,
    store_errors: bool = False,
) -> Any | None:
    """:func:`read_artifact_text` parsed as JSON. :raises ArtifactError: over the cap, not UTF-8, not JSON."""
    text = read_artifact_text(client, run_id, path, max_bytes, artifact_uri=artifact_uri, store_errors=store_errors)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ArtifactError(run_id, path, f"is not JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except RecursionError:
        raise ArtifactError(run_id, path, "is not JSON the package reads (nested too deep)") from None


def load_json(client: MlflowClient, run_id: str, artifact_file: str) -> Any | None:
    """A JSON artifact of the run, or ``None`` when the run has none at that path.

    :raises ArtifactError: the file is larger than :data:`MAX_ARTIFACT_BYTES`, not UTF-8 or not JSON.
    """
    return read_artifact_json(client, run_id, artifact_file)


def log_text(client: MlflowClient, run_id: str, text: str, artifact_file: str) -> None:
    client.log_text(run_id, text, artifact_file)


def log_figures(client: MlflowClient, run_id: str, figures: dict[str, Any], prefix: str = "plots") -> None:
    for name, fig in figures.items():
        client.log_figure(run_id, fig, f"{prefix}/{name}")


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float | None], prefix: str = "") -> None:
    """Log the defined metrics; an undefined one (``None``, NaN, infinite) is left out (MLflow has no null)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    defined = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    batch = [Metric(f"{prefix}{k}", v, now, 0) for k, v in defined.items()]
    if batch:
        client.log_batch(run_id, metrics=batch)


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log params once: a retry that finds them already logged leaves them (MLflow params are immutable)."""
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    if new:
        client.log_batch(run_id, params=new)


def dump_json(data: Any) -> str:
    """Strict JSON text of ``data`` (undefined numbers as ``null``), keys sorted."""
    return dumps(data, indent=2, sort_keys=True)


def all_pages(search: Any, **kwargs: Any) -> list[Any]:
    """Every result of a paged MLflow search (collected before anything acts on them)."""
    found: list[Any] = []
    token = None
    while True:
        page = search(**kwargs, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def _points_at(source: str, model: Any) -> bool:
    """Whether a model version's ``source`` is the logged model ``model`` or lies in its artifacts."""
    uri = f"models:/{model.model_id}"
    location = str(model.artifact_location or "").rstrip("/")
    return source == uri or source.startswith(uri + "/") or bool(location and source.startswith(location))


def registered_models(client: MlflowClient, run_id: str, models: list[Any]) -> set[str] | None:
    """Ids of ``models`` (logged models of run ``run_id``) a registered model version points at.

    Asked of the registry, by model: the versions registered from the run and those whose source is the
    model's ``models:/<id>`` URI, matched by ``model_id`` where the store records it (a version read back
    from the SQLite store or a tracking server leaves it empty) or else by source. ``None`` when a version of
    the run has a source that names none of them and no other logged model (``runs:/...``, a path): then no
    model of the run is proven unregistered.
    """
    ids = {m.model_id for m in models}
    versions = all_pages(client.search_model_versions, filter_string=f"run_id = '{_quote(run_id)}'")
    for model in models:
        versions += all_pages(client.search_model_versions, filter_string=f"source_path = 'models:/{model.model_id}'")
    found: set[str] = set()
    for version in versions:
        source = str(version.source or "")
        hits = {m.model_id for m in models if _points_at(source, m)}
        if getattr(version, "model_id", None) in ids:
            hits.add(version.model_id)
        # models:/m-<id> names one logged model (maybe another run's); any other source of this run's version
        # (runs:/..., a path) may be any of its models
        if not hits and not source.startswith("models:/m-") and version.run_id == run_id:
            return None
        found |= hits
    # a tracking server (and mlflow.register_model) also tags a registered model with its versions
    found |= {m.model_id for m in models if (m.tags or {}).get("mlflow.modelVersions", "[]") not in ("", "[]")}
    return found


def scratch_dir() -> str:
    base = settings.mlops_home() / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(dir=os.fspath(base))


#: Rows a dataset's column types are inferred from (missing values are counted over every row).
SCHEMA_SAMPLE_ROWS = 1_000


def pandas_dataset(frame: Any, *, source: str, targets: str, name: str, digest: str) -> Any:
    """``mlflow.data.from_pandas`` without MLflow's row-by-row schema inference over the whole frame.

    MLflow infers a dataset's schema value by value (about 10 s for a million rows); the column types come
    from a sample here and each column's ``required`` flag from a vectorised missing-value count over all
    rows, so the logged schema is the one MLflow would infer. A column missing in the whole sample is
    inferred from all its rows.
    """
    import pandas as pd
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    dataset = mlflow.data.from_pandas(frame, source=source, targets=targets, name=name, digest=digest)  # type: ignore[attr-defined]

    def plain(rows: Any) -> Any:  # categoricals as the values they hold (a text column read compactly is text)
        kinds = {c: object for c in rows.columns if isinstance(rows[c].dtype, pd.CategoricalDtype)}
        return rows.astype(kinds) if kinds else rows

    sample = frame.head(SCHEMA_SAMPLE_ROWS)
    empty = [c for c in frame.columns if sample[c].isna().all()]
    if empty:
        sample = frame.drop(columns=empty).head(SCHEMA_SAMPLE_ROWS)
    missing = frame.isna().any()
    inferred = {spec.name: spec for spec in infer_signature(plain(sample)).inputs.inputs}
    if empty:
        inferred.update({spec.name: spec for spec in infer_signature(plain(frame[empty])).inputs.inputs})
    columns: list[ColSpec | TensorSpec] = []
    for column in frame.columns:
        spec = inferred[str(column)]
        columns.append(ColSpec(spec.type, spec.name, required=not bool(missing[column])))
    dataset.__dict__["schema"] = Schema(columns)  # the value of the ``schema`` cached property
    return dataset
