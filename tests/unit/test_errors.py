"""Every exception the package defines is an ``MlopsError``: callers tell a known refusal from a bug by type."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import mlops_airflow
from mlops_airflow.core.errors import MlopsError


def _package_modules():
    for info in pkgutil.walk_packages(mlops_airflow.__path__, prefix="mlops_airflow."):
        if info.name.endswith("__main__"):
            continue
        yield importlib.import_module(info.name)


def test_every_exception_class_of_the_package_is_an_mlops_error():
    defined = {
        f"{module.__name__}.{name}": cls
        for module in _package_modules()
        for name, cls in vars(module).items()
        if inspect.isclass(cls)
        and issubclass(cls, BaseException)
        and not issubclass(cls, Warning)  # warnings are not refusals
        and cls.__module__ == module.__name__
    }
    assert len(defined) > 15  # the walk found the package's errors
    outside = sorted(name for name, cls in defined.items() if not issubclass(cls, MlopsError))
    assert outside == []
