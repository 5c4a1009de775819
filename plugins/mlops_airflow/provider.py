"""The provider info of the ``mlops-airflow`` distribution (its ``apache_airflow_provider`` entry point).

Airflow calls :func:`get_provider_info` whenever it discovers providers (``airflow providers list``, the
connection form, every component's start), so it only returns data: class names as strings, nothing
imported. The connection form's fields are declared here (``ui-field-behaviour``), so Airflow does not import
the hook to draw the form.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

PACKAGE_NAME = "mlops-airflow"
INTEGRATION = "MLflow"
HOOK_CLASS = "mlops_airflow.hooks.mlflow_hook.MlflowHook"
PLUGIN_CLASS = "mlops_airflow.plugin.MlopsPlugin"


def distribution_version() -> str:
    """The installed version of the distribution."""
    try:
        return version(PACKAGE_NAME)
    except PackageNotFoundError:  # imported from a plugins folder, not installed
        return "0+unknown"


def get_provider_info() -> dict[str, Any]:
    """What ``airflow providers get mlops-airflow`` shows; Airflow checks it against its provider info schema."""
    return {
        "package-name": PACKAGE_NAME,
        "name": "MLOps for scikit-learn with MLflow",
        "description": (
            "Continuous training of scikit-learn models from a YAML spec: data validation, candidate search, "
            "a statistical gate against the champion, promotion and rollback through the MLflow model registry, "
            "drift monitoring and batch scoring."
        ),
        "versions": [distribution_version()],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://mlflow.org/docs/latest/ml/model-registry/",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "mlops_airflow.operators.data",
                    "mlops_airflow.operators.training",
                    "mlops_airflow.operators.deploy",
                    "mlops_airflow.operators.monitoring",
                    "mlops_airflow.operators.notify",
                ],
            }
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["mlops_airflow.hooks.mlflow_hook"]}],
        "connection-types": [
            {
                "hook-class-name": HOOK_CLASS,
                "hook-name": "MLflow",
                "connection-type": "mlflow",
                # the same fields as MlflowHook.get_ui_field_behaviour
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "extra"],
                    "relabeling": {"host": "Tracking URI or host", "login": "Username", "password": "Password"},
                    "placeholders": {"host": "http://mlflow:5000"},
                },
            }
        ],
        "extra-links": ["mlops_airflow.operators.base.MlflowRunLink"],
        "notifications": ["mlops_airflow.operators.notify.ModelEventNotifier"],
        "plugins": [{"name": "mlops_airflow", "plugin-class": PLUGIN_CLASS}],
    }
