"""Airflow plugin of mlops-airflow for a deployment that takes the package from its plugins folder (the
reference project): the class lives in :mod:`mlops_airflow.plugin`.

Where the distribution is installed (``pip install mlops-airflow``, or ``uv sync`` in this repository), its
``airflow.plugins`` entry point registers the plugin; this file then registers nothing, because Airflow would
report the second registration of the same name as a plugin import error.
"""

from importlib.metadata import entry_points

if not any(ep.value == "mlops_airflow.plugin:MlopsPlugin" for ep in entry_points(group="airflow.plugins")):
    from mlops_airflow.plugin import MlopsPlugin

    __all__ = ["MlopsPlugin"]
