"""Shared plumbing of the package's operators: the model spec, MLflow, storage and the run link, and the helpers
several operators use (storage paths, trigger params, landed batches, snapshots, native threads)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseOperatorLink

# MLflow draws a progress bar on stderr for every artifact download (tqdm); a task's stderr is logged at ERROR
# level, so a successful promotion or rollback would show red "Downloading artifacts" lines. Set here, where
# every task of the package starts, unless the environment says otherwise.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

    from mlops_airflow.core.spec import ModelSpec
    from mlops_airflow.hooks.mlflow_hook import MlflowHook


class MlflowRunLink(BaseOperatorLink):
    """ "MLflow" button on a task instance: opens the MLflow run (or model version) the task wrote to."""

    name = "MLflow"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return str(getattr(operator, "mlflow_url", "") or "")


class MlopsBaseOperator(BaseOperator):
    """Base of every operator here: holds the model name, resolves its spec and MLflow lazily.

    ``__init__`` only assigns (DAG parsing stays cheap and free of I/O); everything else happens in
    ``execute``.

    :param model_name: the model spec's name (``include/models/<model_name>.yaml``).
    :param mlflow_conn_id: Airflow connection of the MLflow tracking server.
    """

    template_fields: Sequence[str] = ("model_name",)
    operator_extra_links = (MlflowRunLink(),)
    ui_color = "#d6eaf8"

    def __init__(self, *, model_name: str, mlflow_conn_id: str = "mlflow_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.mlflow_conn_id = mlflow_conn_id
        self.mlflow_url: str | None = None

    @cached_property
    def spec(self) -> ModelSpec:
        from mlops_airflow.core.config import get_spec

        return get_spec(self.model_name)

    @cached_property
    def hook(self) -> MlflowHook:
        from mlops_airflow.hooks.mlflow_hook import MlflowHook

        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    @cached_property
    def client(self) -> Any:
        return self.hook.get_conn()

    @cached_property
    def experiment_id(self) -> str:
        from mlops_airflow.core.tracking import experiment_id

        return experiment_id(self.client, self.model_name)

    def parent_run_id(self, context: Context) -> str:
        """The MLflow run of this DAG run (created by ``snapshot``, found again by its Airflow tags)."""
        from mlops_airflow.core import tracking

        run_id = tracking.parent_run_id(self.client, self.experiment_id, self.dag_id, context["run_id"])
        if run_id is None:
            raise RuntimeError(
                f"no MLflow run tagged {tracking.TAG_DAG_ID}={self.dag_id} {tracking.TAG_RUN_ID}="
                f"{context['run_id']} in experiment {self.model_name!r}: did the snapshot task run?"
            )
        self.link_run(run_id)
        self.client.set_tag(run_id, f"airflow.try_number.{self.task_id}", str(context["ti"].try_number))
        return run_id

    @cached_property
    def signing_key(self) -> bytes | None:
        """The key of the gate signatures (:func:`mlops_airflow.core.signing.signing_key`): env
        ``MLOPS_SIGNING_KEY``, else the Airflow variable ``mlops_signing_key``, else the embedded default's
        local key. Only Airflow holds it: a person with MLflow write access cannot sign what no gate blessed.
        """
        from airflow.sdk import Variable

        from mlops_airflow.core.signing import KEY_ENV, signing_key

        explicit = None if os.environ.get(KEY_ENV) else Variable.get("mlops_signing_key", default=None)
        return signing_key(self.hook.tracking_uri, explicit=explicit)

    def require_signing_key(self) -> bytes:
        """:attr:`signing_key`, or a failure (no retry) saying where a key comes from."""
        from airflow.sdk.exceptions import AirflowFailException

        if self.signing_key is None:
            raise AirflowFailException(
                f"no signing key for the MLflow registry at {self.hook.tracking_uri}: set MLOPS_SIGNING_KEY (or the "
                "Airflow variable mlops_signing_key) on every worker and the model server; without it no version "
                "can be proven blessed"
            )
        return self.signing_key

    def servable(self, *, alias: str = "champion", version: str | None = None, required: bool = True) -> Any:
        """The version holding ``alias`` (or ``version``) proven blessed (:func:`mlops_airflow.core.champion.resolve`);
        None when no version holds the alias and ``required`` is false. Anything not proven fails the task
        without retries, naming the version and the rule it breaks."""
        from airflow.sdk.exceptions import AirflowFailException

        from mlops_airflow.core.champion import NoVersionError, UnblessedVersionError, resolve

        try:
            return resolve(self.client, self.model_name, self.require_signing_key(), alias=alias, version=version)
        except NoVersionError as err:
            if required:
                raise AirflowFailException(str(err)) from None
            return None
        except UnblessedVersionError as err:
            raise AirflowFailException(str(err)) from None

    def link_run(self, run_id: str) -> None:
        from mlops_airflow.core.tracking import run_url

        self.mlflow_url = run_url(self.experiment_id, run_id)

    @staticmethod
    def storage_root() -> Any:
        """Base of snapshots and predictions, as an ``ObjectStoragePath`` (``file://`` or ``s3://``)."""
        from airflow.sdk import ObjectStoragePath

        from mlops_airflow.core import settings

        return ObjectStoragePath(settings.storage_base(), conn_id=settings.storage_conn_id())


# ------------------------------------------------------------------------- helpers of several operators


def storage_path(uri: str) -> Any:
    """An ``ObjectStoragePath`` for a landing-zone or storage URI (local paths become ``file://``)."""
    from pathlib import Path

    from airflow.sdk import ObjectStoragePath

    from mlops_airflow.core import settings

    if "://" not in uri:
        return ObjectStoragePath(Path(uri).resolve().as_uri())
    if uri.startswith("file://"):
        return ObjectStoragePath(uri)
    return ObjectStoragePath(uri, conn_id=settings.storage_conn_id())


def trigger_data_uri(value: str | None, param: str = "data_uri") -> str | None:
    """A trigger's ``data_uri`` confined to the landing roots (normalised), or ``None`` when it is empty.

    Trigger params are untrusted input (docs/design.md 7): a location outside ``MLOPS_DATA_ROOT`` and
    ``MLOPS_ALLOWED_DATA_ROOTS`` fails the task before anything is listed or read, without retry.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow.core import settings

    text = (value or "").strip()
    if text in {"", "None"}:
        return None
    try:
        return settings.confine_data_uri(text, param=param)
    except settings.DataRootError as err:
        raise AirflowFailException(str(err)) from None


class LandedBatches:
    """A landing or scoring zone as a task reads it: through :mod:`mlops_airflow.core.landing` (listed,
    confined, checked whole and under the size cap). A data fault fails the task without retries, naming the
    file and the rule: a retry does not make bad data good.

    :param spec: the model spec (its landing protocol and size cap apply).
    :param uri: the zone (a path or URI).
    :param fmt: the format of its batch files.
    :param what: what the zone is called in messages.
    :param confined: a trigger named the zone: it and its files must resolve inside the roots when read too.
    """

    def __init__(self, spec: Any, uri: str, fmt: str, what: str = "landing zone", *, confined: bool = False) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from mlops_airflow.core.landing import DataError, LandingZone, MissingZone

        self.zone = LandingZone.of(spec, storage_path(uri), fmt, confined=confined)
        try:
            #: The zone's batch files, oldest first.
            self.files = self.zone.files()
        except MissingZone:  # a retry does not make a folder appear
            raise AirflowFailException(
                f"{what} {uri} does not exist: land {fmt} batch files there (or pass param data_uri)"
            ) from None
        except DataError as err:
            raise AirflowFailException(str(err)) from None

    def frame(self, batch: Any) -> Any:
        """One batch as a pandas frame; ``None`` when it is not whole yet and the spec says ``skip``."""
        read = self.table(batch)
        return None if read is None else read[0]

    def table(self, batch: Any) -> tuple[Any, str] | None:
        """One batch as a pandas frame and the SHA-256 of its bytes; ``None`` as :meth:`frame`."""
        from airflow.sdk.exceptions import AirflowFailException

        from mlops_airflow.core.landing import DataError

        try:
            read = self.zone.usable(batch)
        except DataError as err:
            raise AirflowFailException(str(err)) from None
        return None if read is None else (read[0].to_pandas(), read[1])

    def newest(self, count: int) -> tuple[list[Any], Any]:
        """The ``count`` newest whole batches (oldest first) and their rows as one pandas frame."""
        import pandas as pd
        from airflow.sdk.exceptions import AirflowFailException

        from mlops_airflow.core.landing import DataError

        batches, frames = [], []
        try:
            for batch, read in self.zone.newest(count, self.files):
                if isinstance(read, DataError):
                    raise read
                batches.append(batch)
                frames.append(read[0].to_pandas())
                del read
            if not frames:
                raise self.zone.shortage(0, 1)
        except DataError as err:
            raise AirflowFailException(str(err)) from None
        self.newest_rows = [len(f) for f in frames[::-1]]  # rows of each batch, in the order returned
        return batches[::-1], pd.concat(frames[::-1], ignore_index=True)


def load_snapshot(ref: dict[str, Any]) -> Any:
    from mlops_airflow.core.data import read_manifest

    snapshot = read_manifest(storage_path(ref["snapshot_uri"]))
    if snapshot is None:
        raise RuntimeError(f"{ref['snapshot_uri']}: snapshot manifest is missing")
    return snapshot


def candidate_threads() -> int | None:
    """Native threads (OpenMP, BLAS) one ``train`` task may use; ``None``: no limit.

    The mapped candidates run side by side, one task slot each: with every fit spinning one OpenMP thread
    per core, two fits on two cores run at less than half speed each (measured: 4 candidates at 1M rows took
    137 s side by side against 53 s one after the other). So a task gets ``cores // slots`` threads, where
    slots are the LocalExecutor's ``[core] parallelism`` or the Celery worker's ``[celery]
    worker_concurrency``; ``MLOPS_TRAIN_THREADS`` overrides. Tasks run one at a time in the process of
    ``dag.test()``: no limit there.
    """
    import os

    from airflow.sdk import conf
    from airflow.sdk.execution_time import task_runner

    from mlops_airflow.core.errors import SettingError

    explicit = os.environ.get("MLOPS_TRAIN_THREADS", "").strip()
    if explicit:
        if not explicit.isdigit():
            raise SettingError(f"MLOPS_TRAIN_THREADS={explicit!r}: a whole number of threads is expected")
        return max(1, int(explicit))
    if type(getattr(task_runner, "SUPERVISOR_COMMS", None)).__name__ == "InProcessSupervisorComms":
        return None
    executor = conf.get("core", "executor", fallback="LocalExecutor")
    if "Celery" in executor:
        slots = conf.getint("celery", "worker_concurrency", fallback=16)
    else:
        slots = conf.getint("core", "parallelism", fallback=32)
    return max(1, (os.cpu_count() or 1) // max(1, slots))
