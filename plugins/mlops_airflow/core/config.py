"""Reading the model specs: the YAML files under ``include/models/``, their folder, the cache, and the
candidates a spec's search space expands to.

This module is imported at DAG-parse time, so it uses only pydantic and PyYAML. The schema is
:mod:`mlops_airflow.core.spec`; a wrong file fails with its :class:`~mlops_airflow.core.spec.ModelSpecError`,
whose message names the file, the key and what is wrong with it.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlops_airflow.core.spec import ModelSpec, ModelSpecError


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only ``true``/``false`` (any case) are booleans.

    YAML 1.1 (PyYAML's default) also reads ``yes``, ``no``, ``on`` and ``off`` as booleans, so label values or
    categories written ``[no, yes]`` became ``[False, True]`` and matched no landed ``"no"``/``"yes"`` text.
    A boolean option (``nullable: yes``) is still a boolean: the schema converts the text.
    """


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml(text: str) -> Any:
    """A model spec's YAML text as data (:class:`SpecLoader`: safe, YAML 1.2 booleans)."""
    return yaml.load(text, Loader=SpecLoader)  # a SafeLoader subclass: no object construction


def include_dir() -> Path:
    """``include/`` of this deployment: the folder that holds ``models/`` (``MLOPS_INCLUDE_DIR`` overrides)."""
    import os

    override = os.environ.get("MLOPS_INCLUDE_DIR")
    return Path(override) if override else models_dir().parent


def module_file(factory: str) -> Path:
    """The file under ``include/`` that holds a ``module:function`` transformer factory.

    The dotted module is a path relative to ``include/``; the resolved file (symlinks followed) must lie
    inside ``include/``, so a spec can only name code that is reviewed with the DAGs.
    """
    module, _, _ = factory.partition(":")
    root = include_dir().resolve()
    path = (root / Path(*module.split("."))).with_suffix(".py")
    resolved = path.resolve()
    if not resolved.is_relative_to(root) or not resolved.is_file():
        raise ModelSpecError(f"transformer: {factory!r}: no module {module!r} under {root} (expected {path})")
    return resolved


def candidate_grid(spec: ModelSpec) -> list[dict[str, Any]]:
    """The candidates of the search: every grid combination in a stable order, or the random samples.

    Neither materialises a product: a grid is checked against ``max_candidates`` when the spec is parsed
    (its size is a product of lengths), and random search draws ``n_candidates`` points from a seeded
    generator, skipping duplicates.
    """
    est = spec.estimator
    space = est.search_space
    if not space:
        return [{}]
    keys = sorted(space)
    if est.search.kind == "grid":
        lists = [space[k] for k in keys]
        combos: list[dict[str, Any]] = [{}]
        for key, values in zip(keys, lists, strict=True):
            combos = [{**c, key: v} for c in combos for v in values]  # type: ignore[union-attr]
        return combos
    rng = random.Random(est.search.seed)
    wanted = int(est.search.n_candidates or 1)
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(wanted * 20):
        point = {}
        for key in keys:
            dist = space[key]
            value = rng.choice(dist) if isinstance(dist, list) else dist.sample(rng)
            point[key] = round(value, 12) if isinstance(value, float) else value
        marker = repr(sorted(point.items()))
        if marker not in seen:
            seen.add(marker)
            found.append(point)
        if len(found) == wanted:
            break
    return found


def _format_error(path: Path, err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"])
        msg = str(item["msg"]).removeprefix("Value error, ")
        # A model-level rule names its own key ("slices: ..."): show it as one dotted key.
        inner = re.match(r"^([a-z_][a-z0-9_.]*): (.*)$", msg, flags=re.DOTALL)
        if inner:
            key = f"{key}.{inner.group(1)}" if key else inner.group(1)
            msg = inner.group(2)
        lines.append(f"  {key or '<root>'}: {msg}")
    return f"{path}: invalid model spec\n" + "\n".join(lines)


def parse_model_spec(data: Any, path: Path | str = "<memory>") -> ModelSpec:
    """Validate an already-loaded mapping as a :class:`ModelSpec`."""
    path = Path(path)
    if not isinstance(data, dict):
        raise ModelSpecError(f"{path}: a model spec must be a YAML mapping, got {type(data).__name__}")
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as err:
        raise ModelSpecError(_format_error(path, err)) from None
    if path.suffix in {".yaml", ".yml"} and path.stem != spec.name:
        raise ModelSpecError(f"{path}: name: {spec.name!r} must match the file name {path.stem!r}")
    return spec


def load_model_spec(path: Path | str) -> ModelSpec:
    """Load and validate one model YAML file."""
    path = Path(path)
    try:
        data = read_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ModelSpecError(f"{path}: not valid YAML: {err}") from None
    return parse_model_spec(data, path)


MODELS_DIR_ENV = "MLOPS_MODELS_DIR"


def models_dir() -> Path:
    """``include/models`` of this deployment (``MLOPS_MODELS_DIR`` overrides it)."""
    import os

    override = os.environ.get(MODELS_DIR_ENV)
    if override:
        return Path(override)
    # plugins/mlops_airflow/core/config.py -> repository root (or the Airflow home on a cluster)
    checkout = Path(__file__).resolve().parents[3] / "include" / "models"
    if checkout.is_dir():
        return checkout
    # installed as a distribution (site-packages): the Airflow home's include/, as in an Astro-style project
    return Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser() / "include" / "models"


def use_models_dir(directory: Path | str) -> Path:
    """Make ``directory`` (made absolute) the models folder of this process and of the processes it starts.

    A task's process parses its DAG file before it runs, so a DAG file that calls this (through
    :func:`mlops_airflow.dag_factory.model_dags`) gives its tasks the same folder: :func:`get_spec` and the
    transformer modules under its parent (:func:`include_dir`) resolve there.
    """
    import os

    path = Path(directory).expanduser().resolve()
    os.environ[MODELS_DIR_ENV] = str(path)
    return path


@lru_cache(maxsize=64)
def _load_cached(path: str, mtime: float) -> ModelSpec:
    return load_model_spec(path)


def spec_files(directory: Path | str | None = None) -> list[Path]:
    directory = Path(directory) if directory is not None else models_dir()
    return sorted(directory.glob("*.y*ml"))


def load_all_specs(directory: Path | str | None = None) -> list[ModelSpec]:
    """Every ``*.yaml`` model spec in ``directory``, sorted by name; the first bad one raises."""
    specs, errors = load_specs_tolerant(directory)
    if errors:
        raise next(iter(errors.values()))
    return specs


def load_specs_tolerant(directory: Path | str | None = None) -> tuple[list[ModelSpec], dict[Path, ModelSpecError]]:
    """The good specs, and for every bad file its error: one bad YAML must not hide the other models."""
    specs: list[ModelSpec] = []
    errors: dict[Path, ModelSpecError] = {}
    for path in spec_files(directory):
        try:
            specs.append(_load_cached(str(path), path.stat().st_mtime))
        except ModelSpecError as err:
            errors[path] = err
        except OSError as err:
            errors[path] = ModelSpecError(f"{path}: cannot be read: {err}")
    return specs, errors


def get_spec(name: str, directory: Path | str | None = None) -> ModelSpec:
    directory = Path(directory) if directory is not None else models_dir()
    for suffix in (".yaml", ".yml"):
        path = directory / f"{name}{suffix}"
        if path.exists():
            return _load_cached(str(path), path.stat().st_mtime)
    raise ModelSpecError(f"{directory}: no model spec named {name!r}")
