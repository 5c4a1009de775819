"""docker-compose.yml, .env.example, Dockerfile and requirements.txt, checked without a Docker engine.

The native cluster (harness.py) stands in for the Compose stack in CI; these checks keep the two the
same: same services, same Airflow settings per role, and secrets only from ``.env``.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from typing import Any

import pytest
import yaml
from harness import AIRFLOW_ENV_FILE, LOCAL_ONLY_KEYS, REPO, ROLE_KEYS, NativeCluster, read_env_file

COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
AIRFLOW_SERVICES = {
    "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
    "airflow-worker", "flower",
}  # fmt: skip
SERVICES = AIRFLOW_SERVICES | {"postgres", "redis", "minio", "minio-init", "mlflow"}
ONE_SHOT = {"airflow-init", "minio-init", "demo-data"}
# Keys the official image's entrypoint reads (they are not Airflow settings).
IMAGE_ONLY_KEYS = {"CONNECTION_CHECK_MAX_COUNT", "DUMB_INIT_SETSID"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|_KEY\b|_KEY_ID|TOKEN", re.IGNORECASE)
REQUIRED_REF = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]+\}$")
# ${VAR...} interpolated by Compose ($${VAR} is escaped: the container's shell expands it)
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?][^}]*)?\}")
URL_PASSWORD = re.compile(r"://[^:/@\s]*:([^@\s]+)@")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def compose_text() -> str:
    """docker-compose.yml without its comments."""
    return "\n".join(line for line in COMPOSE_FILE.read_text().splitlines() if not line.lstrip().startswith("#"))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_every_service_of_the_topology_exists(services: dict[str, Any]) -> None:
    assert set(services) >= SERVICES, sorted(SERVICES - set(services))
    assert services["flower"].get("profiles") == ["flower"]
    assert "deploy" not in services["airflow-worker"], "workers scale with --scale, not a fixed replica count"
    assert "container_name" not in services["airflow-worker"], "a fixed container name prevents --scale"


def test_long_running_services_have_healthchecks_and_wait_on_conditions(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for dep, spec in depends.items():
            expected = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec.get("condition") == expected, f"{name} -> {dep}: {spec}"
    for name in AIRFLOW_SERVICES - {"airflow-init", "flower"}:
        assert "airflow-init" in services[name]["depends_on"], f"{name} starts before airflow-init"


def test_no_literal_secret_anywhere(services: dict[str, Any]) -> None:
    text = compose_text()
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):  # a path to a secret is no secret
                assert REQUIRED_REF.match(value), f"{name}.{key} must be only ${{VAR:?...}}, is {value!r}"
            for password in URL_PASSWORD.findall(value):
                assert REQUIRED_REF.match(password), f"{name}.{key}: password in URL is not from .env"
    for var, modifier in VAR_REF.findall(text):
        if SECRET_NAME.search(var):
            assert modifier.startswith(":?"), f"${{{var}}} must use :? (no default, no silent empty value)"
    # the shared settings file is not a place for secrets either
    for key in read_env_file():
        assert not SECRET_NAME.search(key) or key == "AIRFLOW__CORE__AUTH_MANAGER", key


def test_every_variable_is_documented_in_env_example() -> None:
    documented = dict(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))
    used = {var for var, _ in VAR_REF.findall(compose_text())}
    assert used <= set(documented), f"not in .env.example: {sorted(used - set(documented))}"
    for var in used:
        if SECRET_NAME.search(var):
            assert documented[var] == "", f".env.example must not suggest a value for {var}"


def test_airflow_settings_of_compose_equal_those_of_the_native_harness(services: dict[str, Any]) -> None:
    shared = read_env_file()
    cluster = NativeCluster()
    try:
        for role, keys in ROLE_KEYS.items():
            service = services[role]
            assert service.get("env_file") == [str(AIRFLOW_ENV_FILE.relative_to(REPO))], role
            compose_keys = set(environment(service)) - IMAGE_ONLY_KEYS
            assert not compose_keys & set(shared), f"{role}: set in compose AND deploy/airflow.env"
            assert compose_keys == set(keys), (
                f"{role}: compose-only {sorted(compose_keys - set(keys))}, "
                f"harness-only {sorted(set(keys) - compose_keys)}"
            )
            settings = cluster.role_settings(role)
            assert {k: settings[k] for k in shared} == shared, role
            process = cluster.process_env(role, f"check-{role}")
            airflowish = {k for k in process if k.startswith(("AIRFLOW", "MLOPS_", "MLFLOW_", "GX_"))}
            extra = airflowish - set(settings)
            assert extra <= set(LOCAL_ONLY_KEYS), f"{role}: undeclared harness settings {sorted(extra)}"
    finally:
        shutil.rmtree(cluster.base, ignore_errors=True)
    worker = environment(services["airflow-worker"])
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in worker and "AIRFLOW__CORE__FERNET_KEY" not in worker


def test_mlflow_serves_artifacts_from_s3_with_a_postgres_store(services: dict[str, Any]) -> None:
    mlflow = services["mlflow"]
    command = " ".join(mlflow["command"]) if isinstance(mlflow["command"], list) else mlflow["command"]
    assert "--serve-artifacts" in command and '--artifacts-destination "s3://' in command
    assert environment(mlflow)["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    assert "MLFLOW_S3_ENDPOINT_URL" in environment(mlflow)
    init = environment(services["airflow-init"])
    assert init["MLFLOW_TRACKING_URL"] == "http://mlflow:5000"


def test_demo_data_job_lands_batches_where_the_demo_model_reads(services: dict[str, Any]) -> None:
    from mlops_airflow.core.config import get_spec

    job = services["demo-data"]
    assert job.get("profiles") == ["demo"], "demo data never lands in a production stack by default"
    command = " ".join(job["command"])
    source = get_spec("credit_default", REPO / "include" / "models").source.uri
    assert f'python -m mlops_airflow.core.demo_data "$$MLOPS_DATA_ROOT/{source}"' in command
    assert read_env_file()["MLOPS_DATA_ROOT"] == f"s3://{read_env_file()['MLOPS_BUCKET']}"
    assert environment(job)["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert job["depends_on"] == {"minio-init": {"condition": "service_completed_successfully"}}


def test_image_installs_the_locked_requirements() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2-python3\.11$", dockerfile, flags=re.MULTILINE)
    assert "requirements.txt" in dockerfile
    locked: dict[str, set[str]] = {}
    for pkg in tomllib.loads((REPO / "uv.lock").read_text())["package"]:
        locked.setdefault(pkg["name"], set()).add(pkg.get("version", ""))
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", (REPO / "requirements.txt").read_text(), re.MULTILINE)
    assert pins, "requirements.txt pins nothing"
    normalise = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    stale = {name: (version, locked.get(normalise(name))) for name, version in pins
             if version not in locked.get(normalise(name), set())}  # fmt: skip
    assert not stale, f"requirements.txt is not the export of uv.lock (re-export it): {stale}"
    assert dict(pins)["apache-airflow"] == "3.3.2"


def test_mlflow_runs_with_basic_auth_and_airflow_logs_in_as_its_service_user(services: dict[str, Any]) -> None:
    import configparser

    mlflow = services["mlflow"]
    command = " ".join(mlflow["command"])
    assert command.startswith("exec mlflow server --app-name basic-auth "), command
    env = environment(mlflow)
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/opt/airflow/deploy/mlflow/basic_auth.ini"
    assert re.search(r"^COPY .*deploy/mlflow/ /opt/airflow/deploy/mlflow/$", (REPO / "Dockerfile").read_text(), re.M)
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "PGPASSWORD"):
        assert REQUIRED_REF.match(env[key]), f"mlflow.{key} must come from .env"
    auth = configparser.ConfigParser()
    auth.read(REPO / "deploy" / "mlflow" / "basic_auth.ini")
    # a user nobody granted anything may read, never write another's experiment or model
    assert auth["mlflow"]["default_permission"] in {"READ", "NO_PERMISSIONS"}
    assert not auth["mlflow"].get("admin_password"), "the admin password comes from .env, not the file"
    assert ":" not in auth["mlflow"]["database_uri"].split("@")[0].split("://")[1], "no password in the file"
    init = environment(services["airflow-init"])
    assert init["MLFLOW_ADMIN_USERNAME"] == auth["mlflow"]["admin_username"]
    assert init["MLFLOW_SERVICE_USERNAME"] != init["MLFLOW_ADMIN_USERNAME"], "Airflow is no MLflow admin"
    assert services["airflow-init"]["depends_on"]["mlflow"] == {"condition": "service_healthy"}
    assert "mlflow_auth" in (REPO / "deploy" / "postgres" / "init-databases.sh").read_text()


def test_ui_ports_are_published_on_loopback_by_default(services: dict[str, Any]) -> None:
    published = {name: service.get("ports", []) for name, service in services.items() if service.get("ports")}
    assert set(published) >= {"mlflow", "airflow-apiserver", "minio"}, published
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("${MLOPS_BIND_ADDRESS:-127.0.0.1}:"), (
                f"{name} publishes {port} on every interface"
            )


def test_minio_root_keys_stay_with_minio_and_each_client_has_a_scoped_user(services: dict[str, Any]) -> None:
    import json

    root_users = {name for name, service in services.items()
                  if any("MINIO_ROOT_" in value for value in environment(service).values())}  # fmt: skip
    assert root_users == {"minio", "minio-init", "demo-data"}, root_users
    assert (
        environment(services["mlflow"])["AWS_ACCESS_KEY_ID"]
        == "${MINIO_MLFLOW_ACCESS_KEY:?set MINIO_MLFLOW_ACCESS_KEY in .env}"
    )
    init = environment(services["airflow-init"])
    assert init["OBJECT_STORE_ACCESS_KEY"] == "${MINIO_AIRFLOW_ACCESS_KEY:?set MINIO_AIRFLOW_ACCESS_KEY in .env}"
    script = " ".join(services["minio-init"]["command"])
    for user in ("mlflow", "airflow"):
        assert f"mc admin policy create store mlops-{user} /policies/{user}-policy.json" in script
        assert f'mc admin policy attach store mlops-{user} --user "$$MINIO_{user.upper()}_ACCESS_KEY"' in script
    bucket = read_env_file()["MLOPS_BUCKET"]

    def object_grants(user: str) -> dict[str, set[str]]:
        policy = json.loads((REPO / "deploy" / "minio" / f"{user}-policy.json").read_text())
        grants: dict[str, set[str]] = {}
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow"
            for resource in statement["Resource"]:
                assert resource.startswith(f"arn:aws:s3:::{bucket}"), resource
                if resource != f"arn:aws:s3:::{bucket}":
                    grants.setdefault(resource.removeprefix(f"arn:aws:s3:::{bucket}/"), set()).update(
                        statement["Action"]
                    )
        return grants

    write = {"s3:PutObject", "s3:DeleteObject"}
    mlflow_grants = object_grants("mlflow")
    assert set(mlflow_grants) == {"mlflow/*"} and write <= mlflow_grants["mlflow/*"]
    airflow_grants = object_grants("airflow")
    assert set(airflow_grants) == {"landing/*", "storage/*"}, "Airflow never reads MLflow's artifacts directly"
    assert airflow_grants["landing/*"] == {"s3:GetObject"} and write <= airflow_grants["storage/*"]
    assert read_env_file()["MLOPS_STORAGE_BASE"] == f"s3://{bucket}/storage"


def test_shared_settings_mark_a_cluster_and_turn_mlflow_telemetry_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY

    from mlops_airflow.hooks.mlflow_hook import deployment

    shared = read_env_file()
    assert shared[MLFLOW_DISABLE_TELEMETRY.name] == "true" and shared["DO_NOT_TRACK"] == "true"
    assert "MLOPS_ALLOWED_DATA_ROOTS" in shared
    for key, value in shared.items():
        monkeypatch.setenv(key, value)
    assert MLFLOW_DISABLE_TELEMETRY.get() is True
    assert deployment() == "cluster"


def test_signing_key_is_held_by_the_workers_and_the_model_server_only(services: dict[str, Any]) -> None:
    holders = {name for name, service in services.items() if "MLOPS_SIGNING_KEY" in environment(service)}
    assert holders == {"airflow-worker", "model-server"}, holders  # the model server checks signatures
    assert "MLOPS_SIGNING_KEY" not in read_env_file(), "a secret, from .env only"


def test_build_context_leaves_out_secrets_and_local_state() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".env", ".git", ".venv", ".local", "mlruns", "benchmarks/results/tmp"} <= ignored
