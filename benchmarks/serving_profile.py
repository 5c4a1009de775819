"""Where one model-server request spends its time: cProfile over the in-process request path.

Registers one version of the demo model as ``ct_<model>`` does (a private embedded store), loads it the way
the server does (proof of blessing, download, warm-up), then profiles ``--requests`` calls of the request
path without HTTP and without merging: body parsing and checks (``Server.prepare``), the model call,
``Server.finish`` (request log hand-over) and the answer's JSON. Prints the top functions by cumulative time
and the mean per request.

    uv run --frozen python benchmarks/serving_profile.py [--rows 1] [--requests 300]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "serving"))
MODEL = "credit_default"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mlops-bench-profile-"))
    os.environ.update({"MLOPS_HOME": str(home), "MLOPS_MODELS_DIR": str(REPO / "include" / "models"),
                       "MLOPS_SERVING_TOKEN": "profile-token-0123456789"})  # fmt: skip
    for key in ("MLFLOW_TRACKING_URI", "MLOPS_SIGNING_KEY"):
        os.environ.pop(key, None)
    import pandas as pd
    from serving_support import FEATURES, ct_version, log_pipeline

    from mlops_airflow.core import demo_data, encoding, settings
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.core.signing import local_key  # the embedded default's key, as the server reads it
    from mlops_airflow.core.tracking import client_for
    from mlops_airflow.core.training import fit_final
    from mlops_airflow.serving.app import Server, answer_records
    from mlops_airflow.serving.settings import ServingSettings

    spec = get_spec(MODEL)
    client = client_for(settings.default_tracking_uri())
    train = pd.concat([demo_data.generate_batch(d, n_rows=1000, seed=d) for d in range(7)], ignore_index=True)
    pipeline = fit_final(spec, {"learning_rate": 0.1, "max_leaf_nodes": 31}, train)
    version = ct_version(client, spec, lambda: log_pipeline(spec, pipeline, train), signing_key=local_key())
    client.set_registered_model_alias(MODEL, "champion", version)

    server = Server(ServingSettings.from_env(), [spec], client, settings.storage_base())
    slot = server.slots[MODEL]
    server.follower.refresh(slot)
    assert slot.current is not None, slot.last_error
    frame = demo_data.generate_batch(50, n_rows=args.rows, seed=5)[FEATURES]
    raw = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()

    def one(i: int) -> str:
        # the request path without HTTP and without merging: check, predict, log hand-over, answer JSON
        model, checked = server.prepare(slot, raw)
        answer = server.finish(slot, model, checked, model.predict(checked.rows), f"r{i}", dt.datetime.now(dt.UTC))
        return encoding.dumps({"predictions": answer_records(answer)}, separators=(",", ":"))

    for i in range(20):  # warm-up
        one(i)
    profiler = cProfile.Profile()
    began = time.perf_counter()
    profiler.enable()
    for i in range(args.requests):
        one(i)
    profiler.disable()
    per_request = (time.perf_counter() - began) / args.requests
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
    stats.print_stats(args.top)
    stats.print_stats("mlops_airflow|served_model|mlflow/pyfunc|pandas/core/frame.py:.*(__init__|to_json)", 30)
    stats.sort_stats("tottime").print_stats(15)
    if os.environ.get("PROFILE_DETAIL"):
        stats.sort_stats("cumulative").print_callees("check_array")
        stats.print_callers("_shadowed_dict")
    print(out.getvalue())
    print(f"{args.rows} row(s): {1000 * per_request:.2f} ms per request under cProfile ({args.requests} requests)")
    server.follower.release_all()  # the downloaded version copy


if __name__ == "__main__":
    main()
