"""The smoke test's own check of a model's pinned requirements against the interpreter that loads it."""

from __future__ import annotations

import json
import multiprocessing.forkserver
import os
import signal
import subprocess
from importlib.metadata import version

import pytest

from mlops_airflow.core.fresh_process import FRESH_INTERPRETER_ENV, run_in_fresh_process, start_server
from mlops_airflow.core.smoke import requirement_mismatches


def test_pins_the_interpreter_does_not_satisfy_are_named_with_the_installed_version(tmp_path):
    (tmp_path / "requirements.txt").write_text(
        "\n".join(
            [
                f"numpy=={version('numpy')}",
                "pandas==0.0.1",
                "no-such-distribution-here==1.0",
                "scipy>=1.0",  # not a pin: not judged
                "# a comment",
                "",
            ]
        )
    )
    assert requirement_mismatches(str(tmp_path)) == [
        f"pandas==0.0.1 (installed: {version('pandas')})",
        "no-such-distribution-here==1.0 (installed: none)",
    ]


def test_a_model_without_requirements_has_no_mismatch(tmp_path):
    assert requirement_mismatches(str(tmp_path)) == []


# The fresh process the smoke test runs in: real forkserver children running a probe module's ``main``.

PROBE = """
import json, os, signal, sys, time


def main(argv):
    what = argv[0]
    if what == "sleep":
        time.sleep(float(argv[1]))
    elif what == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif what == "fail":
        print("to stderr", file=sys.stderr)
        return 3
    report = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "modules": sorted(sys.modules)}
    report["main"] = getattr(sys.modules["__main__"], "__file__", None)
    if what == "threads":
        from threadpoolctl import threadpool_info

        report["threads"] = threadpool_info()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A module ``smoke_probe`` in the working directory, where a new interpreter (and the child) finds it."""
    (tmp_path / "smoke_probe.py").write_text(PROBE)
    monkeypatch.chdir(tmp_path)
    return "smoke_probe"


def child_report(probe: str, *argv: str, env: dict[str, str] | None = None) -> dict:
    code, out, err = run_in_fresh_process(probe, list(argv), env=env, timeout=120)
    assert code == 0 and out, (code, out, err)
    return json.loads(out.splitlines()[-1])


def test_the_child_runs_with_the_environment_and_directory_of_the_call(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_PROBE_VALUE", "at the first call")
    first = child_report(probe, "env")  # starts the server if none runs yet, with this environment
    assert first["env"]["MLOPS_PROBE_VALUE"] == "at the first call"

    env = {k: v for k, v in os.environ.items() if k != "HOME"}
    env["MLOPS_PROBE_VALUE"] = "at the second call"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "smoke_probe.py").write_text(PROBE)
    monkeypatch.chdir(tmp_path / "elsewhere")
    second = child_report(probe, "env", env=env)
    assert second["env"] == env  # wholesale: HOME, which the server has, is gone
    assert second["cwd"] == str(tmp_path / "elsewhere")


def test_the_child_holds_no_module_of_the_caller(probe, tmp_path, monkeypatch):
    child_report(probe, "modules")  # the server runs from here on
    extra = tmp_path / "caller_only"
    extra.mkdir()
    (extra / "mlops_caller_only_module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(extra))
    import mlops_caller_only_module  # noqa: F401

    import mlops_airflow.operators.deploy  # noqa: F401  (the smoke test's caller, with Airflow)

    report = child_report(probe, "modules")
    modules = set(report["modules"])
    assert "mlops_caller_only_module" not in modules
    assert not {m for m in modules if m == "airflow" or m.startswith("airflow.")}
    # of this package, only what finds the entry point: nothing a model could lean on
    assert {m for m in modules if m.startswith("mlops_airflow")} == {
        "mlops_airflow",
        "mlops_airflow.core",
        "mlops_airflow.core.errors",  # the package's exception base, which the runner's timeout error extends
        "mlops_airflow.core.fresh_process",
    }
    assert report["main"] is None  # the caller's program (here the test runner) was not run again in the child
    assert {"numpy", "pandas", "sklearn", "mlflow"} <= modules  # preloaded by the server


def test_a_child_past_its_timeout_is_killed_and_the_next_call_works(probe):
    with pytest.raises(subprocess.TimeoutExpired, match="ran past its timeout of 1 s and was killed"):
        run_in_fresh_process(probe, ["sleep", "60"], timeout=1)
    code, _, _ = run_in_fresh_process(probe, ["crash"], timeout=120)
    assert code == -signal.SIGKILL
    code, out, err = run_in_fresh_process(probe, ["fail"], timeout=120)
    assert (code, out, err) == (3, "", "to stderr\n")
    assert child_report(probe, "env")["argv"] == ["env"]


def kill_server(wait: bool = False) -> int | None:
    """Kill the forkserver (a server dying cannot be made to happen otherwise); its pid, or ``None`` when none
    was started. Private attribute: the only handle on the server."""
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    if server is not None:
        os.kill(server, signal.SIGKILL)  # the next call comes while it may still be dying
        if wait:  # until it is dead, not reaped: multiprocessing reaps it, and then starts a new one
            os.waitid(os.P_PID, server, os.WEXITED | os.WNOWAIT)
    return server


def test_a_dead_server_is_started_again(probe):
    child_report(probe, "env")
    server = kill_server()
    assert child_report(probe, "env")["argv"] == ["env"]
    assert multiprocessing.forkserver._forkserver._forkserver_pid != server


def test_a_server_started_ahead_serves_the_next_call(probe):
    kill_server(wait=True)
    start_server()
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    assert server is not None
    assert child_report(probe, "env")["argv"] == ["env"]
    assert multiprocessing.forkserver._forkserver._forkserver_pid == server


def test_omp_num_threads_applies_to_libraries_the_server_loaded(probe, monkeypatch):
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    kill_server()  # a server started by an earlier call may have been given a limit: start a new one
    unlimited = child_report(probe, "threads")["threads"]
    assert {lib["user_api"] for lib in unlimited} >= {"openmp", "blas"}  # loaded by the server's preload

    limited = child_report(probe, "threads", env={**os.environ, "OMP_NUM_THREADS": "1"})["threads"]
    assert {(lib["user_api"], lib["num_threads"]) for lib in limited} <= {("openmp", 1), ("blas", 1)}
    assert {lib["user_api"] for lib in limited} >= {"openmp", "blas"}


def test_a_new_interpreter_is_used_when_asked(probe):
    env = {**os.environ, FRESH_INTERPRETER_ENV: "1"}
    modules = set(child_report(probe, "modules", env=env)["modules"])
    assert "sklearn" not in modules  # nothing preloaded
