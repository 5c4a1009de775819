"""deploy/helm: the values files for the official Airflow chart keep the cluster's settings and its secrets rules.

Neither ``helm`` nor the chart's ``values.schema.json`` is available where these tests run (deploy/helm/README.md):
the checks here are the project's own, against deploy/airflow.env, the Dockerfile and the settings the package
reads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / "deploy" / "helm"
#: Environment variables that hold a secret: never a plain value in a values file.
SECRET_ENV = {"MLOPS_SIGNING_KEY", "MLOPS_SERVING_TOKEN", "AIRFLOW_CONN_MLFLOW_DEFAULT", "AIRFLOW_CONN_AWS_DEFAULT"}
#: Settings of the Compose stack only: the chart sets the executor itself, and its own auth manager's users.
COMPOSE_ONLY = {"AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__AUTH_MANAGER", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"}
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|AIRFLOW_CONN_|SQL_ALCHEMY_CONN|BROKER_URL|RESULT_BACKEND")


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((HELM / name).read_text())
    assert isinstance(data, dict), name
    return data


def merged(*names: str) -> dict[str, Any]:
    """Values files layered as ``helm -f a -f b`` layers them (maps merge, anything else is replaced)."""

    def merge(base: Any, top: Any) -> Any:
        if isinstance(base, dict) and isinstance(top, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in top.items()}}
        return top

    out: dict[str, Any] = {}
    for name in names:
        out = merge(out, load(name))
    return out


def airflow_env() -> dict[str, str]:
    pairs = {}
    for line in (REPO / "deploy" / "airflow.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def memory_bytes(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(text[:-2]) * units[text[-2:]] if text[-2:] in units else int(text)


def cpu_millis(text: str) -> int:
    return int(text[:-1]) if str(text).endswith("m") else int(float(text) * 1000)


DEPLOYMENTS = {"kubernetes": ("values.yaml",), "celery": ("values.yaml", "values-celery.yaml")}


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_executor_and_image_are_the_repositorys(deployment: str) -> None:
    values = merged(*DEPLOYMENTS[deployment])
    assert values["executor"] == {"kubernetes": "KubernetesExecutor", "celery": "CeleryExecutor"}[deployment]
    base = re.search(r"^FROM apache/airflow:(\S+)-python", (REPO / "Dockerfile").read_text(), flags=re.M)
    assert base, "Dockerfile: no FROM apache/airflow:<version>-python line"
    assert values["airflowVersion"] == values["images"]["airflow"]["tag"] == base[1]
    assert values["dags"]["gitSync"]["enabled"] is False  # dags/, plugins/, include/ are in the image


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_every_secret_comes_from_a_kubernetes_secret(deployment: str) -> None:
    values = merged(*DEPLOYMENTS[deployment])
    from_secrets = {s["envName"]: s for s in values["secret"]}
    assert set(from_secrets) >= SECRET_ENV, f"not from a Kubernetes secret: {SECRET_ENV - set(from_secrets)}"
    assert all(s["secretName"] and s["secretKey"] for s in from_secrets.values())
    plain = [e["name"] for e in values["env"] if SECRET_WORDS.search(e["name"])]
    assert plain == [], f"secret-looking settings with a plain value: {plain}"
    text = "\n".join((HELM / name).read_text() for name in DEPLOYMENTS[deployment])
    assert not re.search(r"(?im)^\s*(fernetKey|brokerUrl|password|webserverSecretKey):\s*[^~\s]", text)
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert values[key], key
    assert values["data"]["metadataSecretName"]


def test_settings_equal_the_cluster_env_file() -> None:
    """The settings deploy/airflow.env gives every Airflow container in docker-compose.yml, and the same here."""
    env = airflow_env()
    values = load("values.yaml")
    helm_env = {e["name"]: str(e["value"]) for e in values["env"]}
    shared = {k for k in env if not k.startswith("AIRFLOW__")}
    assert shared <= set(helm_env), f"missing from values.yaml env: {shared - set(helm_env)}"
    assert {k: helm_env[k] for k in shared} == {k: env[k] for k in shared}
    for deployment, names in DEPLOYMENTS.items():
        config = merged(*names)["config"]
        for key, value in env.items():
            match = re.fullmatch(r"AIRFLOW__([A-Z_]+?)__([A-Z_]+)", key)
            if not match or key in COMPOSE_ONLY:
                continue
            section, option = match[1].lower(), match[2].lower()
            if section == "celery" and deployment != "celery":
                continue
            assert str(config.get(section, {}).get(option)) == value, f"{deployment}: [{section}] {option}"


def test_training_pods_get_more_than_every_other_task() -> None:
    task = load("values.yaml")["workers"]["resources"]["requests"]
    override = load("pod-override-train.yaml")
    [base] = override["spec"]["containers"]
    assert base["name"] == "base"  # the executor merges a pod_override into its container of this name
    train = base["resources"]["requests"]
    assert cpu_millis(train["cpu"]) > cpu_millis(task["cpu"])
    assert memory_bytes(train["memory"]) > memory_bytes(task["memory"])
    threads = {e["name"]: e["value"] for e in base["env"]}
    assert int(threads["MLOPS_TRAIN_THREADS"]) * 1000 <= cpu_millis(train["cpu"])  # no more threads than cores
    celery = merged(*DEPLOYMENTS["celery"])["workers"]["resources"]["requests"]
    assert memory_bytes(celery["memory"]) >= memory_bytes(train["memory"])  # a Celery worker runs any task
