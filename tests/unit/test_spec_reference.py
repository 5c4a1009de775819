"""The model spec reference in docs/ is generated from the schema and stays in step with it."""

from __future__ import annotations

from pathlib import Path

from mlops_airflow.core import spec
from mlops_airflow.core.spec_reference import render, sections

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "model-spec.md"


def test_committed_reference_is_what_the_schema_renders() -> None:
    assert REFERENCE.read_text() == render(), (
        "docs/model-spec.md is stale: uv run python -m mlops_airflow.core.spec_reference > docs/model-spec.md"
    )


def test_every_key_of_every_section_is_in_the_reference() -> None:
    text = REFERENCE.read_text()
    for model in sections():
        assert f"### {model.__name__}" in text
        for name in model.model_fields:
            assert f"| `{name}` |" in text, f"{model.__name__}.{name} missing from the reference"
    assert spec.WindowSpec in sections() and spec.LabelSpec in sections()
