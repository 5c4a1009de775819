"""Airflow plugin of mlops-airflow: the MLflow link on task instances, and the model page (an app the
api-server mounts under ``/mlops`` with a "Models" entry in the nav).

Installed, the distribution registers it through its ``airflow.plugins`` entry point (and lists it in its
provider info); the reference project's ``plugins/mlops_plugin.py`` registers it from the plugins folder.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from mlops_airflow.operators.base import MlflowRunLink
from mlops_airflow.ui.app import NAV_ROUTE, URL_PREFIX, app


class MlopsPlugin(AirflowPlugin):
    name = "mlops_airflow"
    operator_extra_links = [MlflowRunLink()]
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "mlops-airflow models"}]
    # href relative to Airflow's base URL (no leading slash), so it works behind a reverse proxy
    external_views = [
        {
            "name": "Models",
            "href": f"{URL_PREFIX.strip('/')}/models/",
            "url_route": NAV_ROUTE,
            "destination": "nav",
        }
    ]
