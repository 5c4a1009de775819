"""A trigger's ``data_uri`` is untrusted: it resolves inside the landing roots or is refused, unread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlops_airflow.core import settings
from mlops_airflow.core.settings import DataRootError, confine_data_uri


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Local landing root ``<tmp>/data/landing`` plus ``s3://bucket/landing`` on the allow-list."""
    landing = tmp_path / "data" / "landing"
    (landing / "credit_default").mkdir(parents=True)
    (tmp_path / "data" / "landing2").mkdir()
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLOPS_DATA_ROOT", str(landing))
    monkeypatch.setenv("MLOPS_ALLOWED_DATA_ROOTS", " s3://Bucket/landing/ , gs://other-store/in")
    monkeypatch.delenv("MLOPS_STORAGE_BASE", raising=False)
    monkeypatch.delenv("MLOPS_ARTIFACT_ROOT", raising=False)
    return landing


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("credit_default", "{root}/credit_default"),  # relative: under MLOPS_DATA_ROOT, like source.uri
        ("{root}/credit_default", "{root}/credit_default"),
        ("{root}", "{root}"),
        ("{root}//credit_default/", "{root}/credit_default"),
        ("{root}/credit_default/../credit_default/./x.csv", "{root}/credit_default/x.csv"),
        ("file://{root}/credit_default", "{root}/credit_default"),
        ("file://localhost{root}/credit_default", "{root}/credit_default"),
        ("FILE://{root}/credit%5Fdefault", "{root}/credit_default"),
        ("s3://bucket/landing/credit_default", "s3://bucket/landing/credit_default"),
        ("S3://BUCKET//landing/./a/../credit_default/", "s3://bucket/landing/credit_default"),
        ("s3://bucket/landing", "s3://bucket/landing"),
        ("s3://bucket/landing/%62atch.csv", "s3://bucket/landing/batch.csv"),
        ("gs://other-store/in/x", "gs://other-store/in/x"),
    ],
)
def test_locations_inside_a_landing_root_are_admitted_in_normal_form(roots, given, expected):
    root = os.path.realpath(roots)
    assert confine_data_uri(given.format(root=roots)) == expected.format(root=root)


def test_a_symlink_inside_the_root_to_a_folder_inside_it_is_admitted(roots):
    (roots / "alias").symlink_to(roots / "credit_default")
    assert confine_data_uri(str(roots / "alias")) == os.path.realpath(roots / "credit_default")


@pytest.mark.parametrize(
    "attack",
    [
        "/etc",
        "/etc/passwd",
        "/",
        "../../..",
        "../../../etc/passwd",
        "credit_default/../../../../etc",
        "{root}/../../..",
        "{root}/..",
        "{root}2",  # prefix trick: .../landing2 is not inside .../landing
        "{root}2/x.csv",
        "{root}/%2e%2e/%2e%2e/etc",
        "{root}/%252e%252e/etc",  # encoded twice
        "%2Fetc%2Fpasswd",
        "file:///etc/passwd",
        "file:/etc/passwd",
        "file://evil.example.com{root}/credit_default",
        "file://{root}/../../etc",
        "FILE:///ETC/../etc/shadow",
        "local:///etc/passwd",
        "s3://other-bucket/landing",
        "s3://bucket/secret",
        "s3://bucket/landing/../secret",
        "s3://bucket/landing/%2e%2e/secret",
        "s3://bucket/landing2/x",
        "s3://bucket",
        "s3://bucket/../bucket/landing/../../etc",
        "s3:///landing",  # empty host
        "s3:/bucket/landing",
        "s3:bucket/landing",
        "s3://other_conn@bucket/landing",  # another Airflow connection (credentials, endpoint)
        "s3://bucket%40evil/landing",
        "s3://bucket/landing?versionId=1",
        "s3://bucket/landing#x",
        "gs://bucket/landing",  # same path, other scheme
        "s3a://bucket/landing",
        "gs://other-store/input",
        "simplecache::s3://bucket/landing",
        "zip://x.csv::s3://bucket/landing/a.zip",
        "http://169.254.169.254/latest/meta-data",
        "memory://bucket/landing",
        "{root}/credit_default\\..\\..\\..",
        "{root}/credit_default\x00/etc",
        "   ",
        # Names that read as another name, or that no filesystem holds: refused by name, never a traceback.
        "credit_default/\ud800",  # an unpaired surrogate (valid in a JSON param, not in a file name)
        "credit_default/\udcff",
        "credit_default/%C2%85",  # U+0085, which trimming would drop: "credit_default/" read instead
        "credit_default%C2%A0",  # a trailing no-break space, the same
        "credit_default/\u202egpj.csv",  # a right-to-left override: shows as "csv.jpg"
        "credit_default/\u200b",  # zero-width space
        "credit_default/\u2028x",
        "credit_default/" + "a" * 300,  # over NAME_MAX
        "credit_default/" + "a/" * 2100,  # over PATH_MAX
    ],
)
def test_anything_else_is_refused_naming_the_param_and_the_roots(roots, attack):
    with pytest.raises(DataRootError) as caught:
        confine_data_uri(attack.format(root=roots))
    message = str(caught.value)
    assert message.startswith("data_uri")
    assert os.path.realpath(roots) in message and "s3://bucket/landing" in message
    assert "MLOPS_ALLOWED_DATA_ROOTS" in message


def test_a_symlink_escaping_the_root_is_refused(roots, tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwd.csv").write_text("user,hash\nroot,x\n")
    (roots / "credit_default" / "innocent").symlink_to(secret)
    (roots / "etc").symlink_to("/etc")
    for attack in ("credit_default/innocent", str(roots / "credit_default" / "innocent" / "passwd.csv"), "etc"):
        with pytest.raises(DataRootError, match="outside the allowed landing roots"):
            confine_data_uri(attack)


def test_a_symlinked_root_admits_what_lies_inside_its_target(tmp_path, monkeypatch):
    target = tmp_path / "disk" / "landing"
    (target / "m").mkdir(parents=True)
    (tmp_path / "link").symlink_to(target)
    monkeypatch.setenv("MLOPS_DATA_ROOT", str(tmp_path / "link"))
    monkeypatch.delenv("MLOPS_ALLOWED_DATA_ROOTS", raising=False)
    assert confine_data_uri(str(tmp_path / "link" / "m")) == str(target.resolve() / "m")
    assert confine_data_uri(str(target / "m")) == str(target.resolve() / "m")
    with pytest.raises(DataRootError):
        confine_data_uri(str(tmp_path / "disk"))


def test_the_packages_own_storage_is_no_landing_zone_even_inside_a_root(monkeypatch):
    # the cluster's layout: one bucket, MLOPS_DATA_ROOT its top, snapshots under storage/
    monkeypatch.setenv("MLOPS_DATA_ROOT", "s3://mlops")
    monkeypatch.setenv("MLOPS_STORAGE_BASE", "s3://mlops/storage")
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", "s3://mlops/mlflow")
    monkeypatch.delenv("MLOPS_ALLOWED_DATA_ROOTS", raising=False)
    assert confine_data_uri("landing/credit_default") == "s3://mlops/landing/credit_default"
    assert confine_data_uri("s3://mlops/storage2/x") == "s3://mlops/storage2/x"
    for attack in ("s3://mlops/storage/other_model/snapshots/run-1/train", "storage/x", "s3://MLOPS/mlflow/1/"):
        with pytest.raises(DataRootError, match="no landing zone"):
            confine_data_uri(attack)


def test_a_connection_named_in_the_root_is_the_only_one_admitted(monkeypatch):
    monkeypatch.setenv("MLOPS_DATA_ROOT", "s3://aws_default@mlops/landing")
    monkeypatch.delenv("MLOPS_ALLOWED_DATA_ROOTS", raising=False)
    assert confine_data_uri("s3://aws_default@MLOPS/landing/a") == "s3://aws_default@mlops/landing/a"
    for attack in ("s3://mlops/landing/a", "s3://other@mlops/landing/a", "s3://Aws_default@mlops/landing/a"):
        with pytest.raises(DataRootError):
            confine_data_uri(attack)


def test_a_bad_allow_list_entry_is_a_settings_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MLOPS_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("MLOPS_ALLOWED_DATA_ROOTS", "s3:///nobucket")
    with pytest.raises(DataRootError, match="MLOPS_ALLOWED_DATA_ROOTS"):
        confine_data_uri(str(tmp_path))


def test_the_default_root_is_the_embedded_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLOPS_DATA_ROOT", raising=False)
    monkeypatch.delenv("MLOPS_ALLOWED_DATA_ROOTS", raising=False)
    assert [str(r) for r in settings.allowed_data_roots()] == [os.path.realpath(tmp_path / "data")]
    assert confine_data_uri("landing/m") == os.path.realpath(tmp_path / "data") + "/landing/m"


def test_settings_import_no_airflow():
    import subprocess
    import sys

    code = "import sys, mlops_airflow.core.settings; print(any(m.split('.')[0] == 'airflow' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cluster_settings_keep_mlflow_artifacts_and_snapshots_out_of_reach(monkeypatch):
    """With deploy/airflow.env as the cluster runs it, the bucket is the landing root, but the MLflow
    artifacts and the snapshots in the same bucket are not readable through a trigger's data_uri."""
    from pathlib import Path

    from mlops_airflow.core.settings import DataRootError, confine_data_uri

    env_file = Path(__file__).resolve().parents[2] / "deploy" / "airflow.env"
    for line in env_file.read_text().splitlines():
        if line.startswith("MLOPS_") and "=" in line:
            key, _, value = line.partition("=")
            monkeypatch.setenv(key, value)
    assert confine_data_uri("s3://mlops/landing/credit_default") == "s3://mlops/landing/credit_default"
    for uri in ("s3://mlops/mlflow/1/models", "s3://mlops/storage/credit_default/snapshots"):
        with pytest.raises(DataRootError):
            confine_data_uri(uri)
