"""OpenLineage datasets of the package's tasks: landing files -> snapshot -> model version -> predictions.

The OpenLineage provider's listener calls ``get_openlineage_facets_on_complete`` of a finished task; the
operators of ``snapshot``, ``promote`` and ``predict`` answer with the builders here (what ``execute`` read
and wrote). Nothing is emitted unless the provider is configured (``[openlineage] transport``).

Naming follows OpenLineage's conventions: a local file is namespace ``file``, name its absolute path; an
object ``s3://bucket/key`` is namespace ``s3://bucket``, name ``key``. A model version is namespace
``mlflow://<tracking server>``, name ``<model>/versions/<version>``.
"""

from __future__ import annotations

from functools import cache
from typing import Any
from urllib.parse import urlsplit

PRODUCER = "https://github.com/mlops-airflow/mlops-airflow"


@cache
def facet_classes() -> tuple[type, type]:
    """The package's custom dataset facets (attrs classes, built on first use: OpenLineage loads lazily)."""
    import attr
    from openlineage.client.generated.base import DatasetFacet

    @attr.define
    class ContentHashDatasetFacet(DatasetFacet):  # type: ignore[misc]
        """A snapshot's content hash: the same bytes a model version's ``mlops.data_hash`` tag names."""

        algorithm: str
        hash: str
        trainRows: int | None = None  # OpenLineage facet fields are camelCase
        evalRows: int | None = None

    @attr.define
    class MlflowModelVersionDatasetFacet(DatasetFacet):  # type: ignore[misc]
        """A registered model version: where it came from and which alias it holds."""

        name: str
        version: str
        alias: str | None = None
        runId: str | None = None
        source: str | None = None
        dataHash: str | None = None

    return ContentHashDatasetFacet, MlflowModelVersionDatasetFacet


def dataset_name(uri: str) -> tuple[str, str]:
    """(namespace, name) of a file or object URI by OpenLineage's naming rules."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return "file", parts.path or uri
    host = parts.netloc.rpartition("@")[2]  # drop an Airflow connection id (s3://conn_id@bucket)
    return f"{parts.scheme}://{host}", parts.path.lstrip("/")


def _dataset(uri: str, facets: dict[str, Any] | None = None) -> Any:
    from airflow.providers.common.compat.openlineage.facet import Dataset

    namespace, name = dataset_name(uri)
    return Dataset(namespace=namespace, name=name, facets=facets or {})


def model_namespace(tracking_uri: str) -> str:
    parts = urlsplit(tracking_uri)
    return f"mlflow://{parts.netloc}" if parts.scheme.startswith("http") else "mlflow://embedded"


def model_version_dataset(tracking_uri: str, model: str, version: str, **facet: Any) -> Any:
    from airflow.providers.common.compat.openlineage.facet import Dataset

    _, version_facet = facet_classes()
    return Dataset(
        namespace=model_namespace(tracking_uri),
        name=f"{model}/versions/{version}",
        facets={"mlflow_model_version": version_facet(name=model, version=str(version), **facet)},
    )


def snapshot_dataset(uri: str, content_hash: str, train_rows: int | None = None, eval_rows: int | None = None) -> Any:
    hash_facet, _ = facet_classes()
    facet = hash_facet(algorithm="sha256", hash=content_hash, trainRows=train_rows, evalRows=eval_rows)
    return _dataset(uri, {"content_hash": facet})


def snapshot_lineage(snapshot: Any) -> Any:
    """``snapshot``: every landed batch it read -> the snapshot (with its content hash)."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    if snapshot is None:
        return OperatorLineage()
    inputs = [_dataset(b.source) for b in snapshot.batches]
    output = snapshot_dataset(snapshot.uri, snapshot.content_hash, snapshot.train_rows, snapshot.eval_rows)
    return OperatorLineage(inputs=inputs, outputs=[output])


def promotion_lineage(tracking_uri: str, model: str, version: Any, alias: str) -> Any:
    """``promote``: the snapshot the version was trained on -> the model version (now ``alias``)."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    if version is None:
        return OperatorLineage()
    tags = dict(version.tags or {})
    inputs = []
    if tags.get("mlops.snapshot_uri"):
        inputs.append(snapshot_dataset(tags["mlops.snapshot_uri"], tags.get("mlops.data_hash", "")))
    output = model_version_dataset(
        tracking_uri,
        model,
        str(version.version),
        alias=alias,
        runId=version.run_id,
        source=version.source,
        dataHash=tags.get("mlops.data_hash"),
    )
    return OperatorLineage(inputs=inputs, outputs=[output])


def prediction_lineage(
    tracking_uri: str, model: str, version: str | None, batches: list[str], written: list[str]
) -> Any:
    """``predict``: the model version and the scored batches -> the prediction files."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    if version is None:
        return OperatorLineage()
    inputs = [model_version_dataset(tracking_uri, model, version, alias="champion")]
    inputs += [_dataset(b) for b in batches]
    return OperatorLineage(inputs=inputs, outputs=[_dataset(w) for w in written])
