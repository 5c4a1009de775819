"""The MLflow server's login as deploy/mlflow/basic_auth.ini configures it: a successful password check is
cached (scrypt costs about 0.1 s of CPU per request otherwise), which must never let a wrong or a changed
password through on the worker that knows of the change."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.e2e


def test_a_cached_login_never_admits_a_wrong_or_changed_password(
    mlflow_server: str, mlflow_logins: dict[str, tuple[str, str]]
) -> None:
    def status(user: str, password: str) -> int:
        response = requests.get(f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name",
                                params={"experiment_name": "Default"}, auth=(user, password), timeout=30)  # fmt: skip
        return response.status_code

    admin = mlflow_logins["admin"]
    name, password = mlflow_logins["serving"]
    assert status(name, password) == 200
    assert status(name, password) == 200  # answered from the cache now
    assert status(name, password + "x") == 401
    assert status(name, "") == 401
    assert status("nobody", password) == 401

    changed = requests.patch(f"{mlflow_server}/api/2.0/mlflow/users/update-password",
                             json={"username": name, "password": "a-new-password"}, auth=admin, timeout=30)  # fmt: skip
    assert changed.ok, changed.text
    assert status(name, password) == 401, "the old password was still accepted after the change"
    assert status(name, "a-new-password") == 200

    deleted = requests.delete(f"{mlflow_server}/api/2.0/mlflow/users/delete", json={"username": name},
                              auth=admin, timeout=30)  # fmt: skip
    assert deleted.ok, deleted.text
    assert status(name, "a-new-password") == 401, "a deleted user's cached login was still accepted"
