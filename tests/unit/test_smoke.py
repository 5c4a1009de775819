"""The smoke test's own check of a model's pinned requirements against the interpreter that loads it."""

from __future__ import annotations

from importlib.metadata import version

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
