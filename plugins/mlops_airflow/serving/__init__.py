"""The model server: every model of ``include/models/`` at its MLflow ``champion``, over HTTP.

``python -m mlops_airflow.serving`` (``make serve``; compose service ``model-server``) runs the FastAPI app of
:mod:`mlops_airflow.serving.app` under uvicorn. It follows ``champion`` without restarts (background load,
warm-up, atomic swap: :mod:`~mlops_airflow.serving.models`), can shadow-score ``challenger``, checks every
request against the model spec (:mod:`~mlops_airflow.serving.inputs`) and logs what it scored to Parquet for
``monitor_<model>`` (:mod:`~mlops_airflow.serving.request_log`). No Airflow import: it runs over ``core/``.
"""
