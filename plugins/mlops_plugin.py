"""Airflow plugin of mlops-airflow: the MLflow hook's connection type and the MLflow link on task instances."""

from airflow.plugins_manager import AirflowPlugin

from mlops_airflow.operators.base import MlflowRunLink


class MlopsPlugin(AirflowPlugin):
    name = "mlops_airflow"
    operator_extra_links = [MlflowRunLink()]
