"""Run a module's ``main(argv)`` in a fresh process forked from a pre-warmed interpreter.

The smoke test loads a model as the model server would: in a process that holds nothing the caller has in
memory (no module it imported, no class it defined at run time), so that a model needing code it did not
package fails there. A brand-new interpreter gives that, at the price of importing numpy, pandas, pyarrow,
scikit-learn, scipy, MLflow and skops every time (about 3 s). Here the child is forked from a
``multiprocessing`` forkserver that imported those third-party libraries once (:data:`PRELOAD`) and nothing of
this package nor of the caller's ``__main__``. The server starts at the first call of a process and serves the
later ones; a server that died is started again by ``multiprocessing`` at the next call.

Per call, the child takes the caller's environment and working directory as of the call (not the server's,
which are those of its first caller), the ``sys.path`` a new interpreter started there would have, and the
thread limits ``OMP_NUM_THREADS`` asks for (OpenMP and BLAS read it when they load, which in the server
happened before the call). Its stdout and stderr (file descriptors 1 and 2) are captured.

A brand-new interpreter (``python -m <module> ...``) is used instead when the forkserver start method is not
available, when the caller is a daemonic ``multiprocessing`` process (which may not have children), or when
the environment passed sets ``MLOPS_SMOKE_FRESH_INTERPRETER=1``.

This module imports only the standard library: the child imports it to find its entry point.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlops_airflow.core.errors import MlopsError

#: Third-party modules the forkserver imports once: what loading and predicting with a model of this package
#: imports (a module that is not installed is skipped). Never a module of this package nor ``__main__``: the
#: child would then hold code the model server does not have, and a model that needs it would pass.
PRELOAD = [
    "numpy",
    "pandas",
    "pyarrow",
    "pyarrow.parquet",
    "pyarrow.dataset",
    "scipy.stats",
    "threadpoolctl",
    "sklearn",
    "sklearn.pipeline",
    "sklearn.compose",
    "sklearn.preprocessing",
    "sklearn.impute",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "mlflow",
    "mlflow.pyfunc",
    "mlflow.artifacts",
    "skops.io",
]

#: Set to ``1`` in the environment passed to ask for a brand-new interpreter.
FRESH_INTERPRETER_ENV = "MLOPS_SMOKE_FRESH_INTERPRETER"

_start_lock = threading.Lock()
_interpreter_paths: dict[tuple[str | None, ...], list[str]] = {}


class FreshProcessTimeout(MlopsError, subprocess.TimeoutExpired):
    """The child ran past its timeout and was killed (the forkserver it was forked from runs on)."""

    def __init__(self, cmd: Any, timeout: float, output: str, stderr: str, pid: int | None) -> None:
        super().__init__(cmd, timeout, output, stderr)
        self.pid = pid
        self.stderr_tail = stderr[-3000:]

    def __str__(self) -> str:
        where = f"forked child (pid {self.pid})" if self.pid is not None else "child process"
        text = f"{self.cmd!r}: the {where} ran past its timeout of {self.timeout} s and was killed"
        return f"{text}:\n{self.stderr_tail}" if self.stderr_tail else text


def run_in_fresh_process(
    module: str, argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 600.0
) -> tuple[int, str, str]:
    """``module.main(list(argv))`` in a fresh process: ``(returncode, stdout, stderr)``.

    The return code is what ``python -m module argv`` would exit with (``main``'s return value, 1 for an
    uncaught exception, minus the signal number for a child killed by a signal). ``env`` (default: this
    process's environment) becomes the child's whole environment. Past ``timeout`` seconds the child is
    killed and :class:`FreshProcessTimeout` (a :class:`subprocess.TimeoutExpired`) raised.
    """
    environ = dict(os.environ if env is None else env)
    argv = [str(a) for a in argv]
    context = _forkserver(environ)
    if context is None:
        return _run_interpreter(module, argv, environ, timeout)
    cwd = os.getcwd()
    sys_path = _interpreter_path(environ, cwd)
    with tempfile.TemporaryDirectory(prefix="mlops-fresh-") as scratch:
        out, err = Path(scratch, "stdout"), Path(scratch, "stderr")
        args = (module, argv, environ, cwd, sys_path, str(out), str(err))
        child = _start(context, args, name=f"fresh {module}")
        try:
            child.join(timeout)
            if child.exitcode is None:
                child.kill()
                child.join()
                raise FreshProcessTimeout([module, *argv], timeout, _read(out), _read(err), child.pid)
            return child.exitcode, _read(out), _read(err)
        finally:
            if child.exitcode is not None:
                child.close()


def start_server(env: Mapping[str, str] | None = None) -> None:
    """Start the forkserver now if none runs (a no-op where a new interpreter is used), so that its imports
    overlap the caller's own work before its first :func:`run_in_fresh_process`."""
    if _forkserver(dict(os.environ if env is None else env)) is not None:
        from multiprocessing import forkserver

        with _start_lock, _main_module_hidden():
            forkserver.ensure_running()


def _start(context: Any, args: tuple[Any, ...], name: str, attempts: int = 10) -> Any:
    """Start a child of the forkserver: started again when it was found dead, by ``multiprocessing``.

    A server that was killed is seen dead only once all its threads ended (until then its socket answers and
    hangs up): the start is tried again, a moment later, a few times.
    """
    for attempt in range(attempts):
        child = context.Process(target=_child_main, args=args, name=name)
        try:
            with _start_lock, _main_module_hidden():
                child.start()
            return child
        except (EOFError, ConnectionError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def _forkserver(env: Mapping[str, str]) -> Any:
    """The forkserver context (its preload list set), or ``None`` for a brand-new interpreter."""
    if env.get(FRESH_INTERPRETER_ENV) == "1" or "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    if multiprocessing.current_process().daemon:  # a daemonic process may not have children
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # read when the server (re)starts
    return context


def _run_interpreter(module: str, argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", module, *argv], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    return proc.returncode, proc.stdout, proc.stderr


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """While a child starts, a ``__main__`` with neither spec nor file.

    ``multiprocessing`` sends a child what it needs to run the parent's ``__main__`` again (as
    ``__mp_main__``), for objects defined there. The child's entry point is in this module, so it needs none
    of it, and running it would import the caller's program into the child (``airflow``'s script imports
    Airflow, a benchmark or test runner its own modules).
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is None:
            del sys.modules["__main__"]
        else:
            sys.modules["__main__"] = main


def _interpreter_path(env: Mapping[str, str], cwd: str) -> list[str]:
    """``sys.path`` of ``python -m ...`` started in ``cwd`` with ``env``, not the caller's (to which Airflow
    and test runners add folders): asked of a new interpreter once per working directory and setting."""
    keys = ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONNOUSERSITE", "PYTHONUSERBASE")
    key = (sys.executable, cwd, *(env.get(k) for k in keys))
    if key not in _interpreter_paths:
        listed = subprocess.run(
            [sys.executable, "-c", "import json, sys; print(json.dumps(sys.path))"],
            capture_output=True,
            text=True,
            env=dict(env),
            cwd=cwd,
            check=True,
        )
        path = list(json.loads(listed.stdout))
        if path and path[0] == "":  # "-c" puts "" first where "-m" puts the working directory
            path[0] = cwd
        _interpreter_paths[key] = path
    return list(_interpreter_paths[key])


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace") if path.exists() else ""


def _child_main(
    module: str, argv: list[str], env: dict[str, str], cwd: str, sys_path: list[str], out: str, err: str
) -> None:
    """In the forked child: take the caller's environment, directory and path, then run ``module.main``."""
    for fd, file in ((1, out), (2, err)):
        (sys.stdout if fd == 1 else sys.stderr).flush()
        target = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.path[:] = sys_path
    limits = _thread_limits(env)  # kept until the child ends
    try:
        entry = importlib.import_module(module)
        sys.argv = [str(getattr(entry, "__file__", module)), *argv]
        code = entry.main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    del limits
    sys.exit(code)


def _thread_limits(env: Mapping[str, str]) -> Any:
    """Apply ``OMP_NUM_THREADS`` (and ``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS``, else ``OMP_NUM_THREADS``,
    for BLAS) to the native libraries the server loaded before the call; libraries loaded later read the
    environment themselves."""
    openmp = _count(env.get("OMP_NUM_THREADS"))
    blas = _count(env.get("OPENBLAS_NUM_THREADS") or env.get("MKL_NUM_THREADS")) or openmp
    limits = {api: n for api, n in (("openmp", openmp), ("blas", blas)) if n is not None}
    if not limits:
        return None
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=limits)


def _count(value: str | None) -> int | None:
    try:
        n = int(value or "")
    except ValueError:
        return None
    return n if n > 0 else None
