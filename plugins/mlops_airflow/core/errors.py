"""The package's exception base and the named errors of its edges.

Every error the package raises on purpose is a :class:`MlopsError`: a caller (an operator, the model server,
the CLI) tells a known refusal, whose message names the file, column or setting and the rule, from a bug.
Errors about bad input are also ``ValueError`` (and errors about the environment ``RuntimeError``), so code
that catches those keeps working.

Where each lives: the spec's :class:`~mlops_airflow.core.spec.ModelSpecError`, landing's
:class:`~mlops_airflow.core.landing.DataError` (and :class:`~mlops_airflow.core.training.SplitError`),
validation's :class:`~mlops_airflow.core.validation.DataValidationError`, the registry's
:class:`~mlops_airflow.core.registry.RegistryError` (and the trust rules'
:class:`~mlops_airflow.core.trust.UnblessedVersionError`), signing's
:class:`~mlops_airflow.core.signing.SigningKeyError`; the ones here belong to no single module.

Imported at DAG-parse time: no import beyond the standard library.
"""

from __future__ import annotations


class MlopsError(Exception):
    """Base of every error the package raises on purpose; the message says what is wrong and where."""


class SettingError(MlopsError, ValueError):
    """An environment setting (``MLOPS_*``) with a value the package cannot use; the message names it."""


class RowsError(MlopsError, ValueError):
    """Rows handed to a model or the monitor lack a column it needs, or hold values it cannot take."""


class AssessmentError(MlopsError, ValueError):
    """Candidate and champion cannot be compared on the evaluation rows (no rows, scores that do not match
    them); a retry would not change that."""


class ArtifactError(MlopsError, ValueError):
    """An MLflow artifact the package reads breaks a rule: larger than its cap, not UTF-8 text, not JSON, or a
    path outside the run's artifacts. :attr:`run_id`, :attr:`path` and :attr:`rule` say which and why."""

    def __init__(self, run_id: str, path: str, rule: str) -> None:
        self.run_id, self.path, self.rule = run_id, path, rule
        super().__init__(f"MLflow run {run_id}: artifact {path!r} {rule}")

    def __reduce__(self) -> tuple[type[ArtifactError], tuple[str, str, str]]:  # picklable across processes
        return type(self), (self.run_id, self.path, self.rule)
