"""Continuous-training DAGs of every model in ``include/models/*.yaml`` (ct_, monitor_, predict_, rollback_).

Add a model by adding a YAML file; this file only hands the specs to the factory.
"""

from mlops_airflow.dag_factory import build_dags

globals().update(build_dags())
