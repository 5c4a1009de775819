from mlops_airflow import model_dags

globals().update(model_dags("../include/models"))  # relative to this file's folder
