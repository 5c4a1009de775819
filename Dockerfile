# The cluster image: the official Airflow image plus this project's locked dependencies.
#   requirements.txt is exported from uv.lock (docs/operations.md, "Install into your Airflow"), so the image runs the
#   same versions as `uv sync --frozen`; the project itself is not installed: dags/, plugins/ and
#   include/ are copied to where Airflow looks for them, and plugins/ is on PYTHONPATH.
FROM apache/airflow:3.3.2-python3.11

ARG MLOPS_GIT_COMMIT=unknown
ENV MLOPS_GIT_COMMIT=${MLOPS_GIT_COMMIT} \
    PYTHONPATH=/opt/airflow/plugins

COPY --chown=airflow:0 requirements.txt /opt/airflow/requirements.txt
# Pinning apache-airflow in the same command keeps pip from moving Airflow itself.
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r /opt/airflow/requirements.txt

COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 include/ /opt/airflow/include/
COPY --chown=airflow:0 deploy/airflow_init.py /opt/airflow/deploy/airflow_init.py
# MLflow's basic-auth settings (no secret in it; MLFLOW_AUTH_CONFIG_PATH of the mlflow service)
COPY --chown=airflow:0 deploy/mlflow/ /opt/airflow/deploy/mlflow/
# Mount point of the simple auth manager's password file (written by airflow-init), owned by the
# Airflow user so that a fresh named volume inherits that ownership.
RUN mkdir -p /opt/airflow/auth && chmod 700 /opt/airflow/auth
