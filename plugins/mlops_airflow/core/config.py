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

from mlops_airflow.core.errors import MlopsError
from mlops_airflow.core.spec import MODEL_NAME_RE, ModelSpec, ModelSpecError


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


def _no_duplicate_keys(loader: SpecLoader, node: yaml.MappingNode) -> None:
    """Refuse a key written twice in one mapping: YAML readers keep the last one silently, so a second
    ``gate:`` at the end of a file would replace the first without a word. Keys a merge (``<<``) brings
    in may still be overridden, as YAML merges intend."""
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node)
        except TypeError:  # an unhashable key: the constructor refuses it with its own message
            continue
        if first is not key_node:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found the key {key!r} twice (first {first.start_mark.line + 1}, again {key_node.start_mark.line + 1}:"
                " one would silently replace the other); keep one",
                key_node.start_mark,
            )


def _construct_mapping(loader: SpecLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    if isinstance(node, yaml.MappingNode):
        _no_duplicate_keys(loader, node)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


SpecLoader.construct_mapping = _construct_mapping  # type: ignore[assignment,method-assign]

#: Largest model spec file read, in bytes: a spec is a page of YAML; a larger file is refused unread.
MAX_SPEC_BYTES = 1024 * 1024
#: Deepest nesting of lists and mappings in a spec (a spec needs about 5).
MAX_SPEC_DEPTH = 32
#: Most values a spec may hold once its aliases (``*name``) are expanded, counted before anything is built: a
#: few lines of nested aliases ("billion laughs") would otherwise become millions of values at DAG-parse time.
MAX_SPEC_NODES = 50_000


class SpecTooLarge(MlopsError, yaml.YAMLError):
    """A spec whose YAML is larger, deeper or expands to more values than a spec may (limits above)."""


def _line(event: yaml.Event) -> int:
    return event.start_mark.line + 1 if event.start_mark is not None else 1


def _check_size(text: str) -> None:
    """Walk the YAML's parse events (no recursion, nothing built) and refuse a spec deeper than
    :data:`MAX_SPEC_DEPTH` or holding more than :data:`MAX_SPEC_NODES` values with its aliases expanded."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise SpecTooLarge(f"larger than {MAX_SPEC_BYTES} bytes, the most a model spec may be")
    open_sizes: list[int] = []  # expanded size so far of each open list or mapping (itself included)
    open_anchors: list[str | None] = []
    anchored: dict[str, int] = {}  # expanded size of each anchored value
    total = 0  # values so far, aliases expanded
    for event in yaml.parse(text, Loader=SpecLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(open_sizes) >= MAX_SPEC_DEPTH:
                raise SpecTooLarge(
                    f"line {_line(event)}: lists and mappings nested deeper than {MAX_SPEC_DEPTH} levels"
                )
            open_sizes.append(1)
            open_anchors.append(event.anchor)
            total += 1
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            size, anchor = open_sizes.pop(), open_anchors.pop()
        elif isinstance(event, yaml.ScalarEvent):
            size, anchor = 1, event.anchor
            total += 1
        elif isinstance(event, yaml.AliasEvent):
            size, anchor = anchored.get(str(event.anchor), 1), None
            total += size
        else:
            continue
        if anchor is not None:
            anchored[anchor] = size
        if open_sizes:
            open_sizes[-1] += size
        if total > MAX_SPEC_NODES:
            raise SpecTooLarge(
                f"line {_line(event)}: more than {MAX_SPEC_NODES} values once its aliases (*name) are expanded, "
                "the most a model spec may hold"
            )


def read_yaml(text: str) -> Any:
    """A model spec's YAML text as data (:class:`SpecLoader`: safe, YAML 1.2 booleans, no key twice in a
    mapping), after :func:`_check_size` refused text too large, too deep or expanding to too many values.

    :raises yaml.YAMLError: the text is not valid YAML or breaks one of those limits.
    """
    _check_size(text)
    try:
        return yaml.load(text, Loader=SpecLoader)  # a SafeLoader subclass: no object construction
    except (ValueError, OverflowError) as err:  # a scalar no Python value holds, e.g. an int of 5000 digits
        raise yaml.YAMLError(f"a value cannot be read: {err}") from None


def read_spec_text(path: Path | str) -> str:
    """The text of a spec file: a regular file (a FIFO or a device is refused without blocking) of at most
    :data:`MAX_SPEC_BYTES` bytes (never read further).

    :raises OSError: the file cannot be read, or is not a regular file.
    :raises SpecTooLarge: the file is larger than a spec may be.
    """
    import os
    import stat

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
        data = handle.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecTooLarge(f"larger than {MAX_SPEC_BYTES} bytes, the most a model spec may be")
    return data.decode("utf-8")


def include_dir() -> Path:
    """``include/`` of this deployment: the folder that holds ``models/`` (``MLOPS_INCLUDE_DIR`` overrides)."""
    import os

    override = os.environ.get("MLOPS_INCLUDE_DIR")
    return Path(override) if override else models_dir().parent


def module_file(factory: str) -> Path:
    """The file under ``include/`` that holds a ``module:function`` transformer factory.

    The dotted module is a path relative to ``include/``; the resolved file (symlinks followed) must lie
    inside ``include/`` and outside the models folder, so a spec can only name code that is reviewed with
    the DAGs, never a file dropped beside the specs by whoever may add a model.
    """
    module, _, _ = factory.partition(":")
    root = include_dir().resolve()
    path = (root / Path(*module.split("."))).with_suffix(".py")
    resolved = path.resolve()
    if not resolved.is_relative_to(root) or not resolved.is_file():
        raise ModelSpecError(f"transformer: {factory!r}: no module {module!r} under {root} (expected {path})")
    specs = models_dir().resolve()
    if resolved.is_relative_to(specs):
        raise ModelSpecError(
            f"transformer: {factory!r}: module {module!r} lies in the models folder {specs}, where specs live; "
            "a transformer is code: keep it under include/ outside the models folder (e.g. include/transforms/)"
        )
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


#: What a value of the wrong type should have been, by pydantic's error type.
_EXPECTED = {
    "list_type": "a list",
    "dict_type": "a mapping",
    "float_type": "a number",
    "float_parsing": "a number",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
}


def _type_rule(item: Any) -> str | None:
    """For a value of the wrong type or outside a fixed set, what the key takes and the value it got
    (``gate.thresholds.accuracy: 0.4``: ``expected a mapping with keys from: min, max (got 0.4)``); None for
    any other error."""
    from mlops_airflow.core import spec as spec_module

    kind, ctx, got = item["type"], item.get("ctx") or {}, item.get("input")
    if kind == "literal_error":
        wanted = f"one of {ctx.get('expected', '')}"
    elif kind == "model_type":
        fields = getattr(getattr(spec_module, str(ctx.get("class_name", "")), None), "model_fields", {})
        keys = [field.alias or name for name, field in fields.items()]
        wanted = f"a mapping with keys from: {', '.join(keys)}" if keys else "a mapping"
    elif kind in _EXPECTED:
        wanted = _EXPECTED[kind]
    else:
        return None
    shown = repr(got)
    return f"expected {wanted} (got {shown if len(shown) <= 60 else shown[:57] + '...'})"


def _format_error(path: Path, err: ValidationError) -> str:
    lines = []
    items = err.errors()
    # A value that may be one of several shapes (a list of values or a distribution) fails each: name the key
    # once, without pydantic's names of the shapes, and leave out "not a list" beside the real reason.
    shapes = {"list_type", "dict_type", "model_type"}
    keys = [".".join(str(p) for p in item["loc"] if "[" not in str(p)) for item in items]
    reasoned = {key for item, key in zip(items, keys, strict=True) if item["type"] not in shapes}
    for item, key in zip(items, keys, strict=True):
        if item["type"] in shapes and key in reasoned:
            continue
        msg = _type_rule(item) or str(item["msg"]).removeprefix("Value error, ")
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
        data = read_yaml(read_spec_text(path))
    except SpecTooLarge as err:
        raise ModelSpecError(f"{path}: not a usable model spec: {err}") from None
    except yaml.YAMLError as err:
        raise ModelSpecError(f"{path}: not valid YAML: {err}") from None
    except UnicodeDecodeError as err:
        raise ModelSpecError(f"{path}: not UTF-8 text: {err}") from None
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


SPEC_SUFFIXES = (".yaml", ".yml")


def spec_files(directory: Path | str | None = None) -> list[Path]:
    """The ``*.yaml`` and ``*.yml`` files of ``directory`` (default: :func:`models_dir`), sorted."""
    directory = Path(directory) if directory is not None else models_dir()
    return sorted(p for p in directory.glob("*.y*ml") if p.suffix in SPEC_SUFFIXES)


def twin_specs(files: list[Path]) -> dict[Path, ModelSpecError]:
    """An error for each of two or more files of one folder that specify one model (``x.yaml`` and ``x.yml``):
    the DAGs would come from one and the tasks read the other, under one experiment and registered model."""
    errors: dict[Path, ModelSpecError] = {}
    for path in files:
        twins = [p.name for p in files if p.parent == path.parent and p.stem == path.stem and p != path]
        if twins:
            errors[path] = ModelSpecError(
                f"{path}: name: model {path.stem!r} is also specified by {', '.join(twins)}; keep one file per model"
            )
    return errors


def load_all_specs(directory: Path | str | None = None) -> list[ModelSpec]:
    """Every ``*.yaml`` model spec in ``directory``, sorted by name; the first bad one raises."""
    specs, errors = load_specs_tolerant(directory)
    if errors:
        raise next(iter(errors.values()))
    return specs


def load_specs_tolerant(directory: Path | str | None = None) -> tuple[list[ModelSpec], dict[Path, ModelSpecError]]:
    """The good specs, and for every bad file its error: one bad YAML must not hide the other models."""
    specs: list[ModelSpec] = []
    files = spec_files(directory)
    errors = twin_specs(files)
    for path in files:
        if path in errors:
            continue
        try:
            specs.append(_load_cached(str(path), path.stat().st_mtime))
        except ModelSpecError as err:
            errors[path] = err
        except OSError as err:
            errors[path] = ModelSpecError(f"{path}: cannot be read: {err}")
    return specs, errors


def get_spec(name: str, directory: Path | str | None = None) -> ModelSpec:
    """The spec of model ``name``: ``<name>.yaml`` (or ``.yml``) in ``directory`` (default :func:`models_dir`).

    :raises ModelSpecError: ``name`` is not a model name (so never a path out of the folder), there is no such
        spec, both files exist, or the spec is invalid.
    """
    directory = Path(directory) if directory is not None else models_dir()
    if not MODEL_NAME_RE.match(name):
        raise ModelSpecError(f"{name!r} is not a model name (lower snake_case: a-z, 0-9, _, starting with a letter)")
    found = [directory / f"{name}{suffix}" for suffix in SPEC_SUFFIXES if (directory / f"{name}{suffix}").exists()]
    if len(found) > 1:
        raise ModelSpecError(f"{found[0]}: name: model {name!r} is also specified by {found[1].name}; keep one file")
    for suffix in SPEC_SUFFIXES:
        path = directory / f"{name}{suffix}"
        if path.exists():
            return _load_cached(str(path), path.stat().st_mtime)
    raise ModelSpecError(f"{directory}: no model spec named {name!r}")
