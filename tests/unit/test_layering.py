"""The package's layers (docs/design.md 2), read from the source: every import statement, at module level or
inside a function, under ``TYPE_CHECKING`` or not.

* ``core/`` imports no Airflow and nothing of the package above it (only ``mlops_airflow.core``);
* ``serving/`` imports no Airflow, nor ``ui/`` or ``operators/``;
* ``ui/`` imports neither ``operators/`` nor ``serving/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "plugins" / "mlops_airflow"


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in the file; ``from a import b`` counts as ``a.b`` too, so
    that ``from mlops_airflow import operators`` is seen as the subpackage it names."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the file's own package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


#: layer (folder of the package) -> import prefixes it must not use, and why.
RULES: dict[str, list[tuple[str, str]]] = {
    "core": [("airflow", "core/ never imports Airflow")],
    "serving": [
        ("airflow", "the model server imports no Airflow"),
        ("mlops_airflow.ui", "serving/ sits on core/ only"),
        ("mlops_airflow.operators", "serving/ sits on core/ only"),
    ],
    "ui": [
        ("mlops_airflow.operators", "ui/ sits on core/ only"),
        ("mlops_airflow.serving", "ui/ sits on core/ only"),
    ],
}


def violations(root: Path) -> list[str]:
    """Every import in ``root`` (a copy of the package) that breaks a layer's rules, as ``file:line: module (rule)``."""
    out = []
    for layer, banned in RULES.items():
        for path in sorted((root / layer).rglob("*.py")):
            package = ".".join(["mlops_airflow", *path.relative_to(root).parent.parts])
            for line, module in imported_modules(path, package):
                where = f"{path.relative_to(root)}:{line}: {module}"
                out += [f"{where} ({why})" for prefix, why in banned if _within(module, prefix)]
                if layer == "core" and _within(module, "mlops_airflow") and not _within(module, "mlops_airflow.core"):
                    out.append(f"{where} (core/ imports nothing of the package above it)")
    return sorted(set(out))


def test_the_package_keeps_its_layers() -> None:
    assert violations(PACKAGE) == []


def test_each_rule_catches_its_break(tmp_path: Path) -> None:
    """The check itself: a planted import of each kind is reported, with its file and line."""
    planted = {
        "core/a.py": "def f():\n    from airflow.sdk import BaseOperator\n",
        "core/b.py": "from mlops_airflow.operators.base import MlopsBaseOperator\n",
        "core/c.py": "from .. import dag_factory\n",
        "core/d.py": "from mlops_airflow.core import settings\nfrom . import encoding\n",  # allowed
        "serving/e.py": "import mlops_airflow.ui.app\n",
        "serving/f.py": "from mlops_airflow import operators\n",
        "ui/g.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..serving.app import create_app\n",
        "ui/h.py": "from mlops_airflow.operators import deploy\n",
    }
    for name, text in planted.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = violations(tmp_path)
    assert sorted({v.split(":")[0] for v in found}) == [
        "core/a.py", "core/b.py", "core/c.py", "serving/e.py", "serving/f.py", "ui/g.py", "ui/h.py"
    ]  # fmt: skip
    assert "core/a.py:2: airflow.sdk (core/ never imports Airflow)" in found
    assert "core/c.py:1: mlops_airflow.dag_factory (core/ imports nothing of the package above it)" in found
    assert "ui/g.py:3: mlops_airflow.serving.app (ui/ sits on core/ only)" in found
    assert "serving/f.py:1: mlops_airflow.operators (serving/ sits on core/ only)" in found
