"""Shared plumbing of the package's operators: the model spec, MLflow, storage and the run link."""

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

    from mlops_airflow.core.config import ModelSpec
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
