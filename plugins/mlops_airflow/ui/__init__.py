"""The model page inside Airflow: a FastAPI app the api-server mounts (see :mod:`mlops_airflow.ui.app`)."""
