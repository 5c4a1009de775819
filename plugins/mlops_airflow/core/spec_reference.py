"""The model spec reference (``docs/model-spec.md``), generated from the schema in :mod:`mlops_airflow.core.spec`.

Every key, its type, its default and what it means come from the pydantic models and the ``#:`` comment
above each field, so the reference cannot drift from what the DAG factory accepts (a unit test compares the
committed file with a fresh rendering)::

    uv run python -m mlops_airflow.core.spec_reference > docs/model-spec.md
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from mlops_airflow.core import spec

EXAMPLES = Path(__file__).resolve().parents[3] / "include" / "models"


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The ``#:`` comment lines right above each field of ``model``'s own class body, joined."""
    try:
        lines = inspect.getsource(model).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"^    ([a-z_][a-z0-9_]*)\s*:", line)
        if match and pending:
            out[match.group(1)] = " ".join(pending)
        if stripped:
            pending = []
    return out


def type_text(annotation: Any) -> str:
    """A field's type as a reader of YAML thinks of it."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [type_text(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} (or null)" if type(None) in args else text
    if origin in (list, tuple):
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_text(args[0])} to {type_text(args[1])}" if len(args) == 2 else "mapping"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return f"[{section_name(annotation)}](#{anchor(annotation)})"
    names = {str: "text", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)).replace("typing.", ""))


def section_name(model: type[BaseModel]) -> str:
    return model.__name__


def anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


def default_text(field: Any) -> str:
    if field.is_required():
        return "**required**"
    value = field.default if field.default is not PydanticUndefined else field.default_factory()  # type: ignore[misc]
    if isinstance(value, BaseModel):
        return "see below"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if value == [] or value == {}:
        return "empty"
    if value == "":
        return '`""`'
    return f"`{value}`"


def nested_models(annotation: Any) -> list[type[BaseModel]]:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in nested_models(arg)]


def sections(root: type[BaseModel] = spec.ModelSpec) -> list[type[BaseModel]]:
    """``root`` and every model reachable from its fields, in the order a reader meets them."""
    seen: list[type[BaseModel]] = []
    todo = [root]
    while todo:
        model = todo.pop(0)
        if model in seen:
            continue
        seen.append(model)
        for field in model.model_fields.values():
            todo.extend(m for m in nested_models(field.annotation) if m not in seen)
    return seen


def markdown(text: str) -> str:
    """reST inline literals (double backquotes) as Markdown code."""
    return text.replace("``", "`")


def render_section(model: type[BaseModel]) -> str:
    doc = markdown(inspect.cleandoc(model.__doc__ or ""))
    comments = {k: markdown(v) for k, v in field_comments(model).items()}
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        meaning = comments.get(name, "").replace("|", "\\|")
        rows.append(f"| `{name}` | {type_text(field.annotation)} | {default_text(field)} | {meaning} |")
    return f"### {section_name(model)}\n\n{doc}\n\n" + "\n".join(rows) + "\n"


def render() -> str:
    parts = [
        "# Model spec reference",
        "",
        "One YAML file per model in `include/models/` (the file name is the model's `name`). Generated from the "
        "schema the DAG factory and `mlops lint` validate with; regenerate with "
        "`uv run python -m mlops_airflow.core.spec_reference > docs/model-spec.md`. Unknown keys are refused, "
        "naming the key. A worked example follows the reference.",
        "",
    ]
    parts += [render_section(model) for model in sections()]
    for example in sorted(EXAMPLES.glob("*.yaml")):
        parts += [
            f"## Example: `include/models/{example.name}`",
            "",
            "```yaml",
            example.read_text().rstrip(),
            "```",
            "",
        ]
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
