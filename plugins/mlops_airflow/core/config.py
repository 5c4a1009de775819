"""The model spec: one YAML file under ``include/models/`` describes one continuously trained model.

This module is imported at DAG-parse time, so it uses only pydantic and PyYAML. A wrong spec fails with
:class:`ModelSpecError`, whose message names the file, the key and what is wrong with it.
"""

from __future__ import annotations

import itertools
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MODEL_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

#: Metrics each task type computes; the gate and selection may only name these.
CLASSIFICATION_METRICS = ("roc_auc", "log_loss", "f1", "accuracy", "brier")
REGRESSION_METRICS = ("rmse", "mae", "r2")
#: Metrics where a smaller value is better.
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "rmse", "mae"})


class ModelSpecError(ValueError):
    """A model spec that cannot be used; the message names the file, the key and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    """Where batches land: a directory (local path or fsspec URI) of daily files."""

    uri: str
    format: Literal["csv", "parquet"] = "csv"
    #: Column holding the batch date; batches are ordered by it.
    timestamp_column: str = "event_date"


class ScoringSpec(_Strict):
    """Where unlabelled batches to score land (``predict_<model>``); relative to ``MLOPS_DATA_ROOT``."""

    uri: str | None = None
    format: Literal["csv", "parquet"] = "csv"


class FeatureSpec(_Strict):
    name: str
    type: Literal["numeric", "categorical"]
    #: Whether nulls are allowed (imputed by the pipeline) or a validation failure.
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    #: Allowed categories (categorical features only); other values fail validation.
    categories: list[str] | None = None
    #: Largest share of nulls tolerated when ``nullable`` is true.
    max_null_fraction: float = Field(default=0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check_bounds(self) -> FeatureSpec:
        if self.type == "categorical" and (self.min is not None or self.max is not None):
            raise ValueError("min/max apply to numeric features only")
        if self.type == "numeric" and self.categories is not None:
            raise ValueError("categories apply to categorical features only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class LabelSpec(_Strict):
    name: str
    #: Allowed label values (classification); validation fails on any other value.
    values: list[Any] | None = None


class WindowSpec(_Strict):
    """Time-based split: the newest ``eval_batches`` batches are held out for evaluation."""

    train_batches: int = Field(default=14, ge=1)
    eval_batches: int = Field(default=1, ge=1)


class EstimatorSpec(_Strict):
    """An sklearn estimator by import path, placed after a ColumnTransformer in a Pipeline."""

    #: Import path, e.g. ``sklearn.linear_model.LogisticRegression``.
    cls: str = Field(alias="class")
    params: dict[str, Any] = Field(default_factory=dict)
    #: Candidate grid: every combination is one mapped training task (keys are estimator params).
    search_space: dict[str, list[Any]] = Field(default_factory=dict)
    max_candidates: int = Field(default=8, ge=1, le=64)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("cls")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not value.startswith("sklearn.") or value.count(".") < 2:
            raise ValueError(f"must be an sklearn import path like sklearn.linear_model.Ridge, got {value!r}")
        return value


class MetricBound(_Strict):
    min: float | None = None
    max: float | None = None


class GateSpec(_Strict):
    """Promotion rule. Read by :mod:`mlops_airflow.core.gate`."""

    #: Absolute floors/ceilings, e.g. ``{"roc_auc": {"min": 0.7}}``; checked on every run.
    thresholds: dict[str, MetricBound] = Field(default_factory=dict)
    #: Non-inferiority margin: the lower confidence bound of (candidate - champion) on the primary metric,
    #: oriented so that higher is better, must exceed ``-max_regression``.
    max_regression: float = Field(default=0.01, ge=0.0)
    #: Optional required improvement of the point estimate over the champion.
    min_improvement: float | None = None
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    n_bootstrap: int = Field(default=1000, ge=100)
    #: Per-slice non-regression margin on the primary metric (point estimate).
    slice_max_regression: float = Field(default=0.05, ge=0.0)
    #: Slices with fewer evaluation rows are reported but not gated.
    min_slice_size: int = Field(default=50, ge=1)
    #: With no champion: ``absolute_only`` blesses on the absolute thresholds alone; ``reject`` never does.
    first_run_policy: Literal["absolute_only", "reject"] = "absolute_only"
    require_approval: bool = False


class DriftSpec(_Strict):
    """Monitoring thresholds. Read by :mod:`mlops_airflow.core.drift`."""

    #: Number of newest landed batches that make up "recent production data".
    window_batches: int = Field(default=1, ge=1)
    p_value: float = Field(default=0.01, gt=0.0, lt=1.0)
    psi_threshold: float = Field(default=0.2, gt=0.0)
    #: Share of drifted features that requests a retrain.
    drift_share: float = Field(default=0.3, gt=0.0, le=1.0)
    #: Drop of the live primary metric below the champion's evaluation metric that requests a retrain.
    max_metric_drop: float = Field(default=0.05, ge=0.0)
    cooldown_hours: float = Field(default=24.0, ge=0.0)


class SmokeTestSpec(_Strict):
    max_latency_ms_per_row: float = Field(default=5.0, gt=0.0)
    rows: int = Field(default=200, ge=1)
    serve: bool = False


class ModelSpec(_Strict):
    """One continuously trained model."""

    name: str
    description: str = ""
    owner: str = "mlops"
    task: Literal["classification", "regression"]
    source: SourceSpec
    scoring: ScoringSpec = ScoringSpec()
    features: list[FeatureSpec] = Field(min_length=1)
    label: LabelSpec
    window: WindowSpec = WindowSpec()
    estimator: EstimatorSpec
    #: The metric used to select among candidates and to gate; defaults per task.
    primary_metric: str | None = None
    #: Columns (features) whose categories are evaluated and gated separately.
    slices: list[str] = Field(default_factory=list)
    #: Cron expression, a preset such as ``@daily``, or null for manual/asset-only.
    schedule: str | None = "0 2 * * *"
    gate: GateSpec = GateSpec()
    drift: DriftSpec = DriftSpec()
    smoke_test: SmokeTestSpec = SmokeTestSpec()
    tags: list[str] = Field(default_factory=list)
    #: Minimum rows a snapshot's training set must hold.
    min_rows: int = Field(default=100, ge=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not MODEL_NAME_RE.match(value):
            raise ValueError("must be lower snake_case (a-z, 0-9, _), starting with a letter")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features: duplicate names {dupes}")
        if self.label.name in names:
            raise ValueError(f"label: {self.label.name!r} is also listed as a feature")
        allowed = self.metric_names
        if self.primary_metric is not None and self.primary_metric not in allowed:
            raise ValueError(f"primary_metric: {self.primary_metric!r} is not one of {list(allowed)}")
        for metric in self.gate.thresholds:
            if metric not in allowed:
                raise ValueError(f"gate.thresholds: unknown metric {metric!r} for a {self.task} model")
        categorical = {f.name for f in self.features if f.type == "categorical"}
        for column in self.slices:
            if column not in categorical:
                raise ValueError(f"slices: {column!r} is not a categorical feature")
        return self

    @property
    def metric_names(self) -> tuple[str, ...]:
        return CLASSIFICATION_METRICS if self.task == "classification" else REGRESSION_METRICS

    @property
    def primary(self) -> str:
        """The primary metric (selection and gate)."""
        if self.primary_metric:
            return self.primary_metric
        return "roc_auc" if self.task == "classification" else "rmse"

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric_features(self) -> list[str]:
        return [f.name for f in self.features if f.type == "numeric"]

    @property
    def categorical_features(self) -> list[str]:
        return [f.name for f in self.features if f.type == "categorical"]

    @property
    def retrain_asset_uri(self) -> str:
        return f"mlops://{self.name}/retrain-request"

    @property
    def predictions_asset_uri(self) -> str:
        return f"mlops://{self.name}/predictions"

    @property
    def scoring_asset_uri(self) -> str:
        return f"mlops://{self.name}/scoring-data"

    @property
    def scoring_uri(self) -> str:
        return self.scoring.uri or f"scoring/{self.name}"


def candidate_grid(spec: ModelSpec) -> list[dict[str, Any]]:
    """Every combination of the search space (in a stable order), capped at ``max_candidates``."""
    space = spec.estimator.search_space
    if not space:
        return [{}]
    keys = sorted(space)
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(space[k] for k in keys))]
    return combos[: spec.estimator.max_candidates]


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def finite_or_none(value: Any) -> float | None:
    """``None`` for missing/NaN/inf, so that JSON (XCom, MLflow) never sees a NaN."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _format_error(path: Path, err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        lines.append(f"  {key}: {item['msg']}")
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
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ModelSpecError(f"{path}: not valid YAML: {err}") from None
    return parse_model_spec(data, path)


def models_dir() -> Path:
    """``include/models`` of this deployment (``MLOPS_MODELS_DIR`` overrides it)."""
    import os

    override = os.environ.get("MLOPS_MODELS_DIR")
    if override:
        return Path(override)
    # plugins/mlops_airflow/core/config.py -> repository root (or the Airflow home on a cluster)
    root = Path(__file__).resolve().parents[3]
    return root / "include" / "models"


@lru_cache(maxsize=64)
def _load_cached(path: str, mtime: float) -> ModelSpec:
    return load_model_spec(path)


def load_all_specs(directory: Path | str | None = None) -> list[ModelSpec]:
    """Every ``*.yaml`` model spec in ``directory``, sorted by name."""
    directory = Path(directory) if directory is not None else models_dir()
    specs = []
    for path in sorted(directory.glob("*.y*ml")):
        specs.append(_load_cached(str(path), path.stat().st_mtime))
    return specs


def get_spec(name: str, directory: Path | str | None = None) -> ModelSpec:
    directory = Path(directory) if directory is not None else models_dir()
    for suffix in (".yaml", ".yml"):
        path = directory / f"{name}{suffix}"
        if path.exists():
            return _load_cached(str(path), path.stat().st_mtime)
    raise ModelSpecError(f"{directory}: no model spec named {name!r}")
