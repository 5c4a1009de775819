"""Model specs: every spec in the models folder is valid and has its DAGs (a bad spec gets a stand-in DAG, not
an import error, so the DAG integrity test alone would not see it)."""

from __future__ import annotations

from conftest import MODELS_DIR

PREFIXES = ("ct_", "monitor_", "predict_", "rollback_")


def spec_names() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.y*ml"))


def test_there_are_model_specs():
    assert spec_names(), f"no *.yaml in {MODELS_DIR}"


def test_no_model_spec_is_invalid(dagbag):
    invalid = {dag_id: dag.description for dag_id, dag in dagbag.dags.items() if "invalid-spec" in dag.tags}
    assert invalid == {}


def test_every_model_has_its_dags(dagbag):
    missing = [f"{p}{name}" for name in spec_names() for p in PREFIXES if f"{p}{name}" not in dagbag.dags]
    assert missing == [], f"the DAG folder does not build every model of {MODELS_DIR}"
