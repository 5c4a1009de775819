"""The demo generator lands batches in an S3-compatible store (the Compose stack's `demo-data` service).

The store is moto's S3 server on loopback, a real HTTP endpoint reached through s3fs as MinIO would be.
"""

from __future__ import annotations

import io
import socket
import urllib.request

import pandas as pd
import pytest

from mlops_airflow.core import demo_data

BUCKET = "mlops"


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch):
    import boto3
    from moto.server import ThreadedMotoServer
    from s3fs import S3FileSystem

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    # moto keeps its buckets, and s3fs its filesystems (bound to an endpoint), per process: start clean
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
    S3FileSystem.clear_instance_cache()
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    yield client
    server.stop()


def test_batches_land_in_object_storage_and_continue_after_the_newest(s3_endpoint) -> None:
    url = f"s3://{BUCKET}/landing/credit_default"
    demo_data.main([url, "--days", "3", "--rows", "40"])
    demo_data.main([url, "--next", "--days", "1", "--rows", "40", "--feature-shift", "1"])

    listed = s3_endpoint.list_objects_v2(Bucket=BUCKET, Prefix="landing/credit_default/")["Contents"]
    keys = sorted(obj["Key"] for obj in listed)
    assert keys == [f"landing/credit_default/{demo_data.batch_file_name(day)}" for day in range(4)]
    assert demo_data.next_day(url) == 4

    body = s3_endpoint.get_object(Bucket=BUCKET, Key=keys[-1])["Body"].read()
    landed = pd.read_csv(io.BytesIO(body))
    expected = pd.read_csv(io.BytesIO(demo_data.encode_batch(3, n_rows=40, feature_shift=1.0)))
    pd.testing.assert_frame_equal(landed, expected)
