"""The model spec schema: one YAML file under ``include/models/`` describes one continuously trained model.

This module is imported at DAG-parse time, so it uses only pydantic. A wrong spec fails with
:class:`ModelSpecError`, whose message names the file, the key and what is wrong with it; reading and caching
the files is :mod:`mlops_airflow.core.config`, the metric names it admits are :mod:`mlops_airflow.core.metrics`.

Config is data (docs/design.md 7): ``estimator.class`` must be a scikit-learn classifier or regressor of the
model's task (checked against :mod:`mlops_airflow.core.estimators`, without importing scikit-learn), its
``params`` and ``search_space`` keys must be constructor parameters of that class, and the only code a spec
can name is a transformer factory in a module under ``include/``, imported at task time.
"""

from __future__ import annotations

import math
import random
import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlops_airflow.core.errors import MlopsError
from mlops_airflow.core.estimators import EstimatorNotAllowed, check_estimator, check_params
from mlops_airflow.core.metrics import (
    DEFAULT_PRIMARY,
    METRICS_BY_KIND,
    fairness_metric_names,
)

MODEL_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
#: ``package.module:function`` of a transformer factory under ``include/`` (no leading dots, no ``..``).
FACTORY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")

#: Hard cap on the number of candidates (one mapped task each).
MAX_CANDIDATES = 64

TaskKind = Literal["binary", "multiclass", "regression"]


class ModelSpecError(MlopsError, ValueError):
    """A model spec that cannot be used; the message names the file, the key and the reason."""


class _Strict(BaseModel):
    # NaN and infinities are refused in every number of a spec: a limit of .nan or .inf would switch a rule off
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: Columns the package writes beside a model's inputs (the model server's request log, the model's answer, the
#: prediction files): no feature may be called so, or its values would be overwritten or the log unwritable.
RESERVED_COLUMNS = (
    "request_id", "row", "served_at", "model_version", "role", "threshold", "out_of_domain", "prediction",
    "predicted_at",
)  # fmt: skip
#: The model's answer names one probability column per class with this prefix.
PROBA_PREFIX = "proba_"

#: The longest label delay a spec or a replay may name, in days (ten years): dates stay computable.
MAX_LABEL_DELAY_DAYS = 3650

#: The longest training or evaluation window in days (a hundred years): dates stay computable.
MAX_WINDOW_DAYS = 36_500
#: The longest wait (cooldown, interval between runs) in hours (ten years): times stay computable.
MAX_WAIT_HOURS = 87_600
#: Most bootstrap resamples of the gate: the cost of ``evaluate_vs_champion`` grows with them.
MAX_BOOTSTRAP = 20_000
#: Most rows one predict request may carry: the server holds a request in memory.
MAX_REQUEST_ROWS = 1_000_000
#: Longest Airflow DAG tag.
MAX_TAG_LENGTH = 100
#: Most worker processes or threads an estimator may ask for (``n_jobs``).
MAX_N_JOBS = 64

#: The schedule presets a spec may name, and the cron expressions (UTC) they stand for.
SCHEDULE_PRESETS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0"}


def schedule_cron(schedule: str) -> str:
    """The cron expression of a spec's schedule, a preset resolved: the one reading of a schedule for the DAG
    factory, the retrain policy and the model page.

    :raises ValueError: neither a preset nor a valid 5-field cron expression.
    """
    from croniter import CroniterBadDateError, croniter

    cron = SCHEDULE_PRESETS.get(schedule.strip(), schedule.strip())
    if cron.startswith("@") or len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise ValueError(
            f"{schedule!r} is not a cron expression of 5 fields (UTC) or one of the presets {sorted(SCHEDULE_PRESETS)}"
        )
    try:  # a day that never comes (30 February): the scheduler would fail on it at every turn
        croniter(cron, 0).get_next(float)
    except CroniterBadDateError:
        raise ValueError(f"{schedule!r} names a date that never comes (e.g. 30 February): it would never run") from None
    return cron


def _checked_schedule(value: str | None) -> str | None:
    if value is not None:
        schedule_cron(value)
    return value


class LandingSpec(_Strict):
    """How a producer marks a landed batch whole (docs/operations.md, "Landing protocol"); both zones of a model use it.

    ``none``: a visible file is whole (the producer writes under a dot-name and renames); ``success_marker``:
    a batch is whole once ``_SUCCESS`` is at least as new as the batch; ``manifest``: a batch is whole once
    ``_MANIFEST.json`` lists its row count and SHA-256 and the file matches them.
    """

    #: How a batch is known to be whole: ``none`` (default), ``success_marker`` or ``manifest`` (see above).
    protocol: Literal["none", "success_marker", "manifest"] = "none"
    #: A batch not whole yet: ``skip`` it (warned; older batches fill the window) or ``fail`` the task.
    on_incomplete: Literal["skip", "fail"] = "skip"
    #: A batch modified less than this many seconds ago is taken as still landing (0: no wait).
    settle_seconds: float = Field(default=0, ge=0)


class SourceSpec(_Strict):
    """Where batches land: a directory (local path or fsspec URI) of daily files."""

    #: Folder (local path or fsspec URI) the labelled batch files land in; a relative path is under
    #: ``MLOPS_DATA_ROOT``, e.g. ``landing/credit_default`` or ``s3://bucket/credit``.
    uri: str
    #: Batch file format, ``csv`` or ``parquet`` (a ``.csv``, ``.parquet`` or ``.pq`` file is read by its suffix).
    format: Literal["csv", "parquet"] = "csv"
    #: Column holding the batch date; batches are ordered by it.
    timestamp_column: str = "event_date"
    #: How a landed batch is known to be whole (see LandingSpec); the scoring zone is read the same way.
    landing: LandingSpec = LandingSpec()
    #: Largest landed file read, in bytes (default: ``MLOPS_MAX_FILE_BYTES``, else 2 GiB); larger is refused.
    max_file_bytes: int | None = Field(default=None, ge=1)


class ScoringSpec(_Strict):
    """Where unlabelled batches to score land (``predict_<model>``); relative to ``MLOPS_DATA_ROOT``."""

    #: Folder (local path or fsspec URI) of the unlabelled batches ``predict_<model>`` scores; a relative path
    #: is under ``MLOPS_DATA_ROOT``; default ``scoring/<model name>``.
    uri: str | None = None
    #: Scoring file format, ``csv`` or ``parquet`` (a ``.csv``, ``.parquet`` or ``.pq`` file is read by its suffix).
    format: Literal["csv", "parquet"] = "csv"


FEATURE_TYPES = ("numeric", "categorical", "boolean", "datetime")
DATETIME_PARTS = ("year", "month", "day", "dayofweek", "dayofyear", "hour", "minute", "is_weekend")


def category_code(value: Any) -> Any:
    """A declared category as the text every reader compares it by: ``3`` (or ``3.0``) is ``"3"``, ``true``
    is ``"True"``, text stays as it is; anything else is returned unchanged (pydantic refuses it).

    The same text as :func:`mlops_airflow.core.served_model.category_text` gives a landed or served value
    (this module cannot import that one at DAG-parse time); a unit test keeps the two equal.
    """
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        if not value.is_integer():
            raise ValueError(f"{value!r} is a fraction; a category is text, an integer or a boolean")
        return str(int(value))
    return value


class FeatureSpec(_Strict):
    """One input column: its checks (validation) and its preprocessing (the model's pipeline).

    Preprocessing options apply to one feature type each; naming one on another type is a spec error.
    """

    #: Column name in the landed batches and in serving requests, e.g. ``income``.
    name: str
    #: How the column is checked and preprocessed: ``numeric``, ``categorical`` (text, integer or boolean
    #: codes), ``boolean`` or ``datetime`` (a timestamp or date text).
    type: Literal["numeric", "categorical", "boolean", "datetime"]
    #: Whether nulls are allowed (imputed by the pipeline) or a validation failure.
    nullable: bool = True
    #: Numeric: smallest allowed value (inclusive); a smaller one fails validation and is out of domain when served.
    min: float | None = None
    #: Numeric: largest allowed value (inclusive); a larger one fails validation and is out of domain when served.
    max: float | None = None
    #: Allowed categories (categorical features only): text, integer or boolean codes, kept as text (``3`` is
    #: ``"3"``, as a landed ``3``, ``3.0`` or ``"3"`` is); another value fails validation. Not declared: any
    #: value is valid, and one the model never saw in training is encoded as "none of these".
    categories: list[str] | None = None
    #: Largest share of nulls tolerated when ``nullable`` is true.
    max_null_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    #: ``model``: preprocessed for the model; ``passthrough``: handed to the estimator as is (numeric or
    #: boolean); ``drop``: validated but not a model input (e.g. a sensitive attribute kept for reports).
    use: Literal["model", "passthrough", "drop"] = "model"
    # numeric
    #: Numeric: how a missing value is filled: ``median`` (default), ``mean``, ``most_frequent``, ``constant``
    #: (``fill_value``) or ``none`` (left as NaN for an estimator that takes it).
    impute: Literal["median", "mean", "most_frequent", "constant", "none"] | None = None
    #: Numeric: the value ``impute: constant`` fills in, e.g. ``0``.
    fill_value: float | str | None = None
    #: Numeric: standardise to zero mean and unit variance (default true); ``false`` keeps the values as they are.
    scale: bool | None = None
    #: Numeric: ``true`` applies ``log1p`` before scaling (values must be >= 0); default false.
    log: bool | None = None
    # categorical
    #: Categorical: ``onehot`` (default: one 0/1 column per category), ``ordinal`` (one integer code per
    #: category; unknown is -1) or ``target`` (scikit-learn's TargetEncoder: a cross-fitted target mean).
    encoding: Literal["onehot", "ordinal", "target"] | None = None
    #: A missing value: ``own_category`` (default: a category of its own) or ``most_frequent`` (the training
    #: window's most frequent category).
    missing: Literal["own_category", "most_frequent"] | None = None
    #: Categories rarer than this (a count >= 1, or a share < 1) are grouped into one "infrequent" category.
    min_frequency: float | None = Field(default=None, gt=0)
    #: Categorical, ``onehot`` or ``ordinal``: at most this many categories are encoded, the rarest grouped into
    #: one "infrequent" category (counted among them), e.g. ``20``.
    max_categories: int | None = Field(default=None, ge=2)
    # datetime
    #: Datetime: the parts (in UTC) the model gets as numbers; default ``[year, month, day, dayofweek]``.
    parts: list[Literal["year", "month", "day", "dayofweek", "dayofyear", "hour", "minute", "is_weekend"]] | None = None
    #: ``module:function`` under ``include/`` returning an sklearn transformer for this column (task time).
    transformer: str | None = None

    @field_validator("categories", mode="before")
    @classmethod
    def _category_codes(cls, values: Any) -> Any:
        if not isinstance(values, list):
            return values
        codes = [category_code(v) for v in values]
        texts = [c for c in codes if isinstance(c, str)]
        twice = sorted({c for c in texts if texts.count(c) > 1})
        if twice:
            raise ValueError(f"{twice} listed more than once (3 and '3' are one category)")
        return codes

    @model_validator(mode="after")
    def _check_options(self) -> FeatureSpec:
        by_type = {
            "numeric": {"impute", "fill_value", "scale", "log", "min", "max"},
            "categorical": {"encoding", "min_frequency", "max_categories", "categories", "missing"},
            "boolean": set(),
            "datetime": {"parts"},
        }
        if self.type == "categorical" and self.impute is not None:
            raise ValueError(
                f"impute applies to numeric features; a categorical feature treats a missing value with "
                f"missing: own_category (default) or missing: most_frequent (got impute: {self.impute})"
            )
        others = set().union(*by_type.values()) - by_type[self.type]
        given = sorted(k for k in others if getattr(self, k) is not None)
        if given:
            raise ValueError(f"{', '.join(given)} do(es) not apply to a {self.type} feature")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.log and self.min is not None and self.min < 0:
            raise ValueError("log needs non-negative values (min < 0); log1p is applied")
        if self.encoding == "target" and (self.min_frequency is not None or self.max_categories is not None):
            raise ValueError("min_frequency/max_categories apply to onehot or ordinal encoding, not target")
        if self.use == "passthrough" and self.type not in {"numeric", "boolean"}:
            raise ValueError("use: passthrough is for numeric or boolean features (the estimator needs numbers)")
        if self.use != "model" and self.transformer is not None:
            raise ValueError(f"transformer applies only when use is 'model', not {self.use!r}")
        if self.transformer is not None and not FACTORY_RE.match(self.transformer):
            raise ValueError(
                f"transformer: {self.transformer!r} must be 'module:function' of a module under include/ "
                "(e.g. transforms.credit:clip_income)"
            )
        return self


LabelValue = bool | int | str


class LabelSpec(_Strict):
    """The target. Classification: its allowed ``values`` (ints, strings or booleans, one type), in the order
    the probability columns follow; binary models name the ``positive`` one (default: the second value).

    Late labels: a row without a label is never trained or evaluated on; it is counted (task log, snapshot
    manifest, validation summary, MLflow). Each landed batch may hold at most ``max_unlabelled_fraction`` of
    such rows, except a batch awaiting its labels: one holding a row of the newest ``delay_days`` days (by
    the timestamp column, counted back from the newest landed row). Labels that arrive later are landed by
    replacing the batch file under the same name; the next run reads the new bytes.
    """

    #: Column of the landed batches that holds the target, e.g. ``default``; it may not also be a feature.
    name: str
    #: Classification (required): the label values, in the order of the ``proba_<value>`` output columns,
    #: e.g. ``[0, 1]``; 2 values for ``binary``, 3 or more for ``multiclass``. Regression: leave it out.
    values: list[LabelValue] | None = None
    #: Binary only: the value that is the positive class (its probability is thresholded); default: the second.
    positive: LabelValue | None = None
    #: Days a label takes to arrive: batches of the newest ``delay_days`` days may lack labels in any share.
    #: At most ten years (3650).
    delay_days: int = Field(default=0, ge=0, le=MAX_LABEL_DELAY_DAYS)
    #: Largest share of rows without a label in one batch (older than ``delay_days``); 0: every row labelled.
    max_unlabelled_fraction: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _nullable_hint(cls, data: Any) -> Any:
        if isinstance(data, dict) and "nullable" in data:
            raise ValueError(
                "nullable: a label is not nullable as a feature is; rows without one are left out of training "
                "and evaluation: say how many a batch may hold with max_unlabelled_fraction (0.0..1.0) and how "
                "long labels take with delay_days"
            )
        return data

    @field_validator("values", "positive", mode="before")
    @classmethod
    def _whole_numbers(cls, value: Any) -> Any:
        """A label value written as a decimal (``0.0``, as a label column read as floats shows it) is the
        integer class, never a boolean (``0.0`` would validate as ``false``); a fraction is no class."""
        if isinstance(value, list):
            for v in value:
                if v is None or (isinstance(v, str) and not v.strip()):
                    raise ValueError(
                        f"label value {v!r} is no class: a reader takes an empty or missing label for a row "
                        "without one (counted, see max_unlabelled_fraction)"
                    )
            return [cls._whole_numbers(v) for v in value]
        if isinstance(value, float):
            if not value.is_integer():  # nan and inf too
                raise ValueError(
                    f"label value {value!r} is not a whole number: classes are ints, strings or booleans "
                    f"(quote it, '{value!r}', for a text class)"
                )
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise ValueError(f"label value {value} is outside the 64-bit integer range a label column can hold")
        return value

    @field_validator("values")
    @classmethod
    def _one_type(cls, values: list[Any] | None) -> list[Any] | None:
        if values is None:
            return values
        kinds = {type(v).__name__ for v in values}
        if len(kinds) > 1:
            raise ValueError(f"label values must all be of one type (ints, strings or booleans), got {sorted(kinds)}")
        if len(set(values)) != len(values):
            raise ValueError("label values are not unique")
        if len(values) < 2:
            raise ValueError("a classification label needs at least two values")
        return values


WindowKind = Literal["batches", "time", "rows"]
#: Keys of a window by kind: training keys, evaluation keys.
WINDOW_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "batches": (("train_batches",), ("eval_batches",)),
    "time": (("train_days", "train_weeks"), ("eval_days", "eval_weeks")),
    "rows": (("train_rows",), ("eval_rows",)),
}


class WindowSpec(_Strict):
    """The evaluation set and the training window, measured one way: in landed batches (files), in time (days
    or weeks of the timestamp column) or in labelled rows.

    * batches (default ``{train_batches: 14, eval_batches: 1}``): the newest ``eval_batches`` batches are the
      evaluation set, the ``train_batches`` before them the training window;
    * time (``{train_days: 365, eval_days: 21}``, or ``_weeks``): whole calendar days (UTC) counted back from
      the day of the newest landed row; the evaluation set is the newest ``eval_days``, the training window
      the ``train_days`` before them. Every batch holding a row of either is kept whole in the snapshot, and
      rows outside the bounds (recorded in the snapshot) are not used;
    * rows (``{train_rows: 20000, eval_rows: 2000}``): the newest whole batches holding at least ``eval_rows``
      labelled rows are the evaluation set, the whole batches before them holding ``train_rows`` the
      training window (a batch is never split).

    Candidates are compared on the newest training batches (the selection rows): as few whole batches as hold
    ``min_selection_rows`` rows and, for a classifier, every class of the training window, never more than
    half the window's rows. A window that cannot give ``min_selection_rows`` rows of two classes that way, or
    an evaluation set under ``min_eval_rows`` rows or with one class, fails training with the numbers.
    """

    #: Landed batches (files) of the training window, before the evaluation batches (default 14 when the window
    #: is measured in batches).
    train_batches: int | None = Field(default=None, ge=1)
    #: The newest landed batches, held out for evaluation (default 1 when the window is measured in batches).
    eval_batches: int | None = Field(default=None, ge=1)
    #: Days of the timestamp column in the training window, before the evaluation days (at most 36500).
    train_days: int | None = Field(default=None, ge=1, le=MAX_WINDOW_DAYS)
    #: The newest days of the timestamp column (whole UTC days, up to the newest landed row), for evaluation.
    eval_days: int | None = Field(default=None, ge=1, le=MAX_WINDOW_DAYS)
    #: ``train_days`` in weeks (7 days each); one of the two.
    train_weeks: int | None = Field(default=None, ge=1, le=MAX_WINDOW_DAYS // 7)
    #: ``eval_days`` in weeks (7 days each); one of the two.
    eval_weeks: int | None = Field(default=None, ge=1, le=MAX_WINDOW_DAYS // 7)
    #: Labelled rows of the training window (whole batches, before the evaluation batches).
    train_rows: int | None = Field(default=None, ge=1)
    #: Labelled rows of the evaluation set: the newest whole batches holding at least this many.
    eval_rows: int | None = Field(default=None, ge=1)
    #: Fewest rows candidates are compared on.
    min_selection_rows: int = Field(default=50, ge=1)
    #: Fewest rows the gate's evaluation set may hold.
    min_eval_rows: int = Field(default=50, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _batches_by_default(cls, data: Any) -> Any:
        """No key of a window by time or rows: a window by batches, 14 for training and 1 for evaluation."""
        if isinstance(data, dict):
            other = [k for kind in ("time", "rows") for keys in WINDOW_KEYS[kind] for k in keys]
            if not any(data.get(k) is not None for k in other):
                data = {"train_batches": 14, "eval_batches": 1, **{k: v for k, v in data.items() if v is not None}}
        return data

    @model_validator(mode="after")
    def _one_way(self) -> WindowSpec:
        given = {kind: [k for keys in WINDOW_KEYS[kind] for k in keys if getattr(self, k) is not None]
                 for kind in WINDOW_KEYS}  # fmt: skip
        kinds = [kind for kind, keys in given.items() if keys]
        if len(kinds) > 1:
            mixed = [k for kind in kinds for k in given[kind]]
            raise ValueError(
                f"{', '.join(mixed)} measure the window in {' and '.join(kinds)}; a window is measured one way: "
                "{train_batches, eval_batches}, {train_days|train_weeks, eval_days|eval_weeks} or "
                "{train_rows, eval_rows}"
            )
        kind = kinds[0]
        for side, keys in zip(("training", "evaluation"), WINDOW_KEYS[kind], strict=True):
            set_keys = [k for k in keys if getattr(self, k) is not None]
            if len(set_keys) > 1:
                raise ValueError(f"{' and '.join(set_keys)} both give the {side} window; keep one")
            if not set_keys:
                raise ValueError(f"{' or '.join(keys)} is missing: a window by {kind} names both its parts")
        return self

    @property
    def kind(self) -> WindowKind:
        """``batches``, ``time`` or ``rows``."""
        if self.train_days or self.train_weeks:
            return "time"
        return "rows" if self.train_rows else "batches"

    def _count(self, part: str) -> int:
        if self.kind == "time":
            days, weeks = getattr(self, f"{part}_days"), getattr(self, f"{part}_weeks")
            return int(days) if days is not None else 7 * int(weeks)
        return int(getattr(self, f"{part}_{self.kind}"))

    @property
    def train_size(self) -> int:
        """The training window's size: batches, days (weeks counted as 7 days) or labelled rows."""
        return self._count("train")

    @property
    def eval_size(self) -> int:
        """The evaluation set's size: batches, days (weeks counted as 7 days) or labelled rows."""
        return self._count("eval")

    def describe(self) -> str:
        """The window in words, e.g. ``the newest 21 day(s) for evaluation, the 365 before them for training``."""
        unit = {"batches": "batch(es)", "time": "day(s)", "rows": "labelled row(s) (whole batches)"}[self.kind]
        return f"the newest {self.eval_size} {unit} for evaluation, the {self.train_size} before them for training"


class Distribution(_Strict):
    """A random-search distribution of one estimator parameter."""

    #: ``uniform``: a number between ``low`` and ``high``; ``loguniform``: the same on a log scale (``low`` > 0);
    #: ``randint``: an integer from ``low`` to ``high``, both included; ``choice``: one of ``values``.
    distribution: Literal["uniform", "loguniform", "randint", "choice"]
    #: Lower bound of ``uniform``, ``loguniform`` and ``randint``; below ``high``, e.g. ``0.001``.
    low: float | None = None
    #: Upper bound of ``uniform``, ``loguniform`` and ``randint``, e.g. ``1.0``.
    high: float | None = None
    #: The values ``choice`` draws from, e.g. ``[lbfgs, saga]``.
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> Distribution:
        if self.distribution == "choice":
            if not self.values:
                raise ValueError("choice needs a non-empty 'values' list")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.distribution} needs numbers low < high")
        if self.distribution == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        if not math.isfinite(self.high - self.low):
            raise ValueError(f"{self.distribution} needs high - low to be a finite number")
        if self.distribution == "randint" and math.ceil(self.low) > math.floor(self.high):
            raise ValueError(f"randint needs an integer between low ({self.low:g}) and high ({self.high:g})")
        return self

    def sample(self, rng: random.Random) -> Any:
        if self.distribution == "choice":
            return rng.choice(list(self.values or []))
        low, high = float(self.low or 0.0), float(self.high or 0.0)
        if self.distribution == "uniform":
            return rng.uniform(low, high)
        if self.distribution == "loguniform":
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        return rng.randint(math.ceil(low), math.floor(high))


class SearchSpec(_Strict):
    """How candidates are drawn from ``search_space``: every combination (grid) or ``n_candidates`` samples."""

    #: ``grid``: every combination of the ``search_space`` lists; ``random``: ``n_candidates`` draws (needed
    #: for distributions).
    kind: Literal["grid", "random"] = "grid"
    #: Random search (required there): how many distinct candidates to draw, 1 to 64, e.g. ``16``.
    n_candidates: int | None = Field(default=None, ge=1, le=MAX_CANDIDATES)
    #: Seed of the random draws: the same spec draws the same candidates on every run.
    seed: int = 0


#: A plain YAML value a constructor parameter may take (never anything callable).
ParamValue = bool | int | float | str | None | list[Any] | dict[str, Any]


def _plain(value: Any, where: str) -> None:
    """Refuse anything in a parameter value, however deep, that is not plain data: a value of YAML's other
    types (a date, ``!!binary`` bytes, a ``!!set``), a mapping key that is not text, NaN or an infinity."""
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} is not a finite number")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _plain(item, f"{where}.{i}")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: the key {key!r} is not text")
            _plain(item, f"{where}.{key}")
        return
    raise ValueError(
        f"{where}: a {type(value).__name__} is not a plain value (text, number, boolean, null, list or mapping)"
    )


class EstimatorSpec(_Strict):
    """A scikit-learn estimator class, placed after the spec's preprocessing in a Pipeline."""

    #: Import path, e.g. ``sklearn.linear_model.LogisticRegression``: a classifier or regressor of the task.
    cls: str = Field(alias="class")
    #: Constructor parameters every candidate gets, e.g. ``{max_iter: 150, random_state: 0}``; a
    #: ``search_space`` value for the same parameter overrides it. ``n_jobs`` is null or 1 to 64 (never -1).
    params: dict[str, ParamValue] = Field(default_factory=dict)
    #: Parameter -> list of values (grid; or ``choice`` in random search) or a distribution (random search).
    search_space: dict[str, list[ParamValue] | Distribution] = Field(default_factory=dict)
    #: How candidates are drawn from ``search_space``: ``{kind: grid}`` (default) or
    #: ``{kind: random, n_candidates: 16, seed: 0}``.
    search: SearchSpec = SearchSpec()
    #: Largest grid allowed: a grid over it is a spec error, never silently cut.
    max_candidates: int = Field(default=8, ge=1, le=MAX_CANDIDATES)
    #: ``balanced``: each training row weighted inversely to its class frequency (classification).
    sample_weight: Literal["balanced"] | None = None
    #: Longest one candidate's fit (a ``train`` task) or the final refit (``select_candidate``) may run, in
    #: minutes (at most a week): past it the task fails as Airflow's ``execution_timeout`` says (and is retried
    #: as any task), nothing is registered, and a worker slot is never held by a fit without end.
    fit_timeout_minutes: int = Field(default=360, ge=1, le=10_080)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("params", "search_space", mode="before")
    @classmethod
    def _plain_values(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for key, value in values.items():
                _plain(value, str(key))
        return values

    @model_validator(mode="after")
    def _search(self) -> EstimatorSpec:
        for key, values in self.search_space.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"search_space.{key}: empty list of values")
            if isinstance(values, Distribution) and self.search.kind == "grid":
                raise ValueError(f"search_space.{key}: a distribution needs search.kind: random")
        if self.search.kind == "random" and self.search.n_candidates is None:
            raise ValueError("search: random search needs n_candidates")
        if self.search.kind == "grid" and self.search_space:
            size = math.prod(len(v) for v in self.search_space.values() if isinstance(v, list))
            if size > self.max_candidates:
                raise ValueError(
                    f"search_space: the grid has {size} combinations, more than max_candidates "
                    f"({self.max_candidates}); shrink it, raise max_candidates (up to {MAX_CANDIDATES}) or use "
                    "search: {kind: random, n_candidates: N}"
                )
        return self


class MetricBound(_Strict):
    #: The candidate's metric on the evaluation set must be at least this, e.g. ``0.7``.
    min: float | None = None
    #: The candidate's metric on the evaluation set must be at most this, e.g. ``0.2``.
    max: float | None = None

    @model_validator(mode="after")
    def _a_bound(self) -> MetricBound:
        # a threshold without a bound checks nothing, yet counts as a threshold for the first-run policy
        if self.min is None and self.max is None:
            raise ValueError("a threshold needs 'min' and/or 'max'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is greater than max ({self.max:g}): no value passes")
        return self


class ThresholdOptimize(_Strict):
    """Choose the binary decision threshold on the validation split."""

    #: ``f1``: the threshold with the best F1; ``youden``: the one with the best TPR - FPR (Youden's J).
    optimize: Literal["f1", "youden"]


class GateSpec(_Strict):
    """Promotion rule. Read by :mod:`mlops_airflow.core.gate`."""

    #: Absolute floors/ceilings, e.g. ``{"roc_auc": {"min": 0.7}}``; checked on every run.
    thresholds: dict[str, MetricBound] = Field(default_factory=dict)
    #: Non-inferiority margin: the lower confidence bound of (candidate - champion) on the primary metric,
    #: oriented so that higher is better, must exceed ``-max_regression``.
    max_regression: float = Field(default=0.01, ge=0.0)
    #: Optional required improvement of the point estimate over the champion.
    min_improvement: float | None = None
    #: Two-sided coverage of the paired-bootstrap interval of (candidate - champion) whose lower bound is
    #: checked against ``max_regression``.
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    #: Bootstrap resamples of the evaluation set (100 to 20000) drawn by ``evaluate_vs_champion``; more is
    #: steadier and slower.
    n_bootstrap: int = Field(default=1000, ge=100, le=MAX_BOOTSTRAP)
    #: Per-slice non-regression margin on the primary metric (point estimate).
    slice_max_regression: float = Field(default=0.05, ge=0.0)
    #: Slices with fewer evaluation rows are reported but not gated.
    min_slice_size: int = Field(default=50, ge=1)
    #: With no champion: ``absolute_only`` blesses on the absolute thresholds alone; ``reject`` never does.
    first_run_policy: Literal["absolute_only", "reject"] = "absolute_only"
    #: ``true``: a person approves in Airflow (task ``approve``, after ``smoke_test``) before ``promote`` runs.
    require_approval: bool = False


class DriftSpec(_Strict):
    """Monitoring thresholds. Read by :mod:`mlops_airflow.core.drift`."""

    #: Number of newest landed batches that make up "recent production data".
    window_batches: int = Field(default=1, ge=1)
    #: A feature drifts when its test's p-value (KS for numeric, chi-squared for categorical) is below this
    #: and its PSI reaches ``psi_threshold``.
    p_value: float = Field(default=0.01, gt=0.0, lt=1.0)
    #: Smallest population stability index (PSI) of a drifted feature, together with ``p_value``.
    psi_threshold: float = Field(default=0.2, gt=0.0)
    #: Share of drifted features that requests a retrain.
    drift_share: float = Field(default=0.3, gt=0.0, le=1.0)
    #: Drop of the live primary metric below the champion's evaluation metric that requests a retrain.
    max_metric_drop: float = Field(default=0.05, ge=0.0)
    #: Hours after a retrain request in which ``request_retrain`` sends no other (logged as suppressed); at
    #: most 87600 (ten years).
    cooldown_hours: float = Field(default=24.0, ge=0.0, le=MAX_WAIT_HOURS)


class RetrainSpec(_Strict):
    """When CT runs: the schedule, the monitor's triggers and the limits on how often. Read by
    :mod:`mlops_airflow.core.retrain_policy` (and ``mlops replay``). The defaults are the behaviour without the
    section: the top-level ``schedule``, a retrain on drift or on an observed drop of ``drift.max_metric_drop``,
    one triggered run per ``drift.cooldown_hours``, no weekly cap."""

    #: Cron expression or preset of scheduled CT runs, or null for none; default: the top-level ``schedule``.
    schedule: str | None = None

    _schedule = field_validator("schedule")(_checked_schedule)
    #: A drift report that asks for a retrain (``drift.drift_share`` of the features drifted) starts a run.
    on_drift: bool = True
    #: Estimated drop (label-free estimate of the primary metric below the champion's) that starts a run,
    #: used when the monitor has an estimate; null: the estimate starts no run.
    max_estimated_drop: float | None = Field(default=None, ge=0.0)
    #: Observed drop (live primary metric on labelled rows below the champion's) that starts a run;
    #: null: ``drift.max_metric_drop``.
    max_observed_drop: float | None = Field(default=None, ge=0.0)
    #: Fewest hours since the last CT run before another one starts (scheduled runs included); null: the
    #: schedule always runs and a triggered run waits ``drift.cooldown_hours``. At most 87600 (ten years).
    min_interval_hours: float | None = Field(default=None, ge=0.0, le=MAX_WAIT_HOURS)
    #: Most CT runs (scheduled and triggered) in any 7 days; null: no cap.
    max_runs_per_week: int | None = Field(default=None, ge=1)


class SmokeTestSpec(_Strict):
    #: Largest prediction time per row in milliseconds (median of 5 calls on ``rows`` rows, one thread);
    #: slower fails the smoke test of ``challenger`` before promotion.
    max_latency_ms_per_row: float = Field(default=5.0, gt=0.0)
    #: How many evaluation rows (the first ones) the registered ``challenger`` is scored and timed on.
    rows: int = Field(default=200, ge=1)
    #: ``true``: also serve the model with ``mlflow models serve`` and post 20 rows; no answer fails the test.
    serve: bool = False


class CanarySpec(_Strict):
    """A share of live traffic answered by a blessed ``challenger``, watched against the champion; the model
    server takes it out of traffic when it breaks a limit (:mod:`mlops_airflow.serving.canary`)."""

    #: Share of requests (percent) the challenger answers; sticky per caller with header ``X-Caller-Key``.
    percent: float = Field(gt=0.0, le=100.0)
    #: Challenger requests answered before its limits are judged.
    min_requests: int = Field(default=100, ge=1)
    #: Largest share of challenger requests that may fail (a failed one is answered by the champion).
    max_error_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    #: Largest p99 of the challenger's server-side latency (ms) over its recent requests; none: not judged.
    max_latency_p99_ms: float | None = Field(default=None, gt=0.0)


class ServingSpec(_Strict):
    """Online serving of the model's ``champion`` (:mod:`mlops_airflow.serving`)."""

    #: Also score every request with ``challenger`` off the response path; both answers are logged.
    shadow: bool = False
    #: Largest number of rows one predict request may carry (more is refused with 413), at most 1000000.
    max_rows: int = Field(default=10_000, ge=1, le=MAX_REQUEST_ROWS)
    #: A served value outside the spec's domain (a categorical value not in ``categories``, a numeric one
    #: outside ``min``/``max``): ``reject`` refuses the request (422), ``flag`` answers it and marks the row
    #: (response and request log). Features that declare neither are not checked.
    out_of_domain: Literal["reject", "flag"] = "reject"
    #: Canary: ``challenger`` answers a share of live traffic until it breaks a limit (none: no canary).
    canary: CanarySpec | None = None


class FairnessCriterion(_Strict):
    """A fairness criterion the gate checks on the candidate: ``metric`` across the groups of
    ``attribute`` (a categorical or boolean feature, a model input or not) must not exceed ``max``."""

    #: A categorical or boolean feature whose groups are compared (``use: drop`` keeps it out of the model),
    #: e.g. ``gender``.
    attribute: str
    #: ``demographic_parity_difference`` or ``equalized_odds_difference`` (binary), or ``<metric>_difference``
    #: of a metric of the model's kind, e.g. ``roc_auc_difference``.
    metric: str
    #: Largest difference between two groups tolerated (in the metric's own units).
    max: float = Field(ge=0.0)
    #: Groups with fewer evaluation rows are reported but left out of the difference.
    min_group_size: int = Field(default=30, ge=1)


class ModelCardSpec(_Strict):
    """What the generated model card states that the data cannot tell: intended use and known limitations."""

    #: What the model is for and for whom: the card's "Intended use" section.
    intended_use: str = ""
    #: Known limitations, one bullet each in the card's "Known limitations" section.
    limitations: list[str] = Field(default_factory=list)


#: What a model's ``notify`` section can send (each message links to the model page and the run).
NotifyEvent = Literal[
    "promotion", "rollback", "gate_rejected", "validation_failed", "retrain_requested", "approval_waiting"
]
NOTIFY_EVENTS: tuple[str, ...] = get_args(NotifyEvent)
CONN_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")


def _conn_id(value: str) -> str:
    if not CONN_ID_RE.match(value):
        raise ValueError(
            f"{value[:40]!r} is not an Airflow connection id (letters, digits, '_', '.', '-'); the YAML names "
            "connections only, never a URL, address or secret"
        )
    return value


class EmailNotifySpec(_Strict):
    """E-mail through Airflow's SMTP notifier: server, login and sender live in the connection."""

    #: Airflow SMTP connection that holds the server, login and sender, e.g. ``smtp_ml``.
    conn_id: str = "smtp_default"
    #: Recipients (at least one), e.g. ``[ml-team@example.com]``.
    to: list[str] = Field(min_length=1)
    #: Sender; empty = the connection's ``from_email`` extra.
    from_email: str | None = None

    _check_conn = field_validator("conn_id")(_conn_id)


class SlackNotifySpec(_Strict):
    """Slack through the Slack provider's webhook notifier: the webhook URL lives in the connection."""

    #: Airflow Slack incoming-webhook connection that holds the webhook URL, e.g. ``slack_ml``.
    conn_id: str = "slack_default"

    _check_conn = field_validator("conn_id")(_conn_id)


class NotifySpec(_Strict):
    """Who hears about the model's promotions, rollbacks, rejections, bad data, retrain requests, approvals."""

    #: Send e-mail through an Airflow SMTP connection, e.g. ``{to: [ml-team@example.com]}``.
    email: EmailNotifySpec | None = None
    #: Post to Slack through an Airflow Slack webhook connection, e.g. ``{conn_id: slack_ml}``.
    slack: SlackNotifySpec | None = None
    #: The events that send a message (default: all six), e.g. ``[promotion, rollback, gate_rejected]``;
    #: ``approval_waiting`` comes only with ``gate.require_approval``.
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS))  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _some_channel(self) -> NotifySpec:
        if self.email is None and self.slack is None:
            raise ValueError("notify needs a channel: 'email' and/or 'slack'")
        return self


class ModelSpec(_Strict):
    """One continuously trained model."""

    #: Lower snake_case, equal to the file name: the MLflow experiment and registered model, and the
    #: suffix of the model's DAG ids (``ct_<name>``, ``predict_<name>``, ...), e.g. ``credit_default``.
    name: str
    #: What the model predicts, in a sentence: shown in the CT DAG's docs, on the model page and the model card.
    description: str = ""
    #: Owner of the model's Airflow tasks (shown in the DAG list) and on the model card, e.g. ``risk-ml``; at most
    #: 500 characters (Airflow stores no longer owner).
    owner: str = Field(default="mlops", min_length=1, max_length=500)
    #: ``classification`` (binary or multiclass, from the number of ``label.values``), or the kind itself.
    task: Literal["classification", "binary", "multiclass", "regression"]
    #: Where the labelled training batches land and how they are read.
    source: SourceSpec
    #: Where the unlabelled batches that ``predict_<name>`` scores land.
    scoring: ScoringSpec = ScoringSpec()
    #: The input columns (at least one), each with its checks and preprocessing.
    features: list[FeatureSpec] = Field(min_length=1)
    #: The target column and, for classification, its values.
    label: LabelSpec
    #: The training window and the evaluation set (default: the newest batch evaluates, the 14 before it train).
    window: WindowSpec = WindowSpec()
    #: The scikit-learn estimator, its fixed parameters and the search over candidates.
    estimator: EstimatorSpec
    #: The metric used to select among candidates and to gate; defaults per task kind.
    primary_metric: str | None = None
    #: Binary only: the probability above which the positive label is predicted, or how to choose it
    #: on the validation split (``{optimize: f1}`` or ``{optimize: youden}``).
    threshold: float | ThresholdOptimize | None = None
    #: Columns (features) whose categories are evaluated and gated separately.
    slices: list[str] = Field(default_factory=list)
    #: Cron expression (5 fields, UTC), a preset such as ``@daily``, or null for manual/asset-only.
    schedule: str | None = "0 2 * * *"
    #: The rule a candidate must pass to be registered and promoted.
    gate: GateSpec = GateSpec()
    #: The thresholds with which ``monitor_<name>`` requests a retrain.
    drift: DriftSpec = DriftSpec()
    #: When CT runs: schedule, triggers (drift, estimated and observed drop) and limits on how often.
    retrain: RetrainSpec = RetrainSpec()
    #: Checks of the registered ``challenger``, loaded in a fresh process, before it is promoted.
    smoke_test: SmokeTestSpec = SmokeTestSpec()
    #: How the model server serves the champion.
    serving: ServingSpec = ServingSpec()
    #: Fairness criteria checked by the gate (a violation blocks promotion).
    fairness: list[FairnessCriterion] = Field(default_factory=list)
    #: Text the generated model card states that the data cannot tell.
    model_card: ModelCardSpec = ModelCardSpec()
    #: E-mail and/or Slack messages on the model's events (connection ids only).
    notify: NotifySpec | None = None
    #: Extra Airflow tags of the model's DAGs (besides ``mlops``, the DAG kind and the name), e.g. ``[credit-risk]``;
    #: 1 to 100 characters each (Airflow's limit).
    tags: list[str] = Field(default_factory=list)
    #: Minimum rows a snapshot's training set must hold.
    min_rows: int = Field(default=100, ge=1)

    _schedule = field_validator("schedule")(_checked_schedule)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not MODEL_NAME_RE.match(value):
            raise ValueError("must be lower snake_case (a-z, 0-9, _), starting with a letter")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, values: list[str]) -> list[str]:
        # Airflow refuses a longer tag when it builds the DAG: the DAG file of every model would fail to import
        wrong = [t for t in values if not 1 <= len(t) <= MAX_TAG_LENGTH]
        if wrong:
            raise ValueError(f"{[t[:40] for t in wrong]}: a tag is 1 to {MAX_TAG_LENGTH} characters")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features: duplicate names {dupes}")
        if self.label.name in names:
            raise ValueError(f"label: {self.label.name!r} is also listed as a feature")
        reserved = sorted(n for n in names if n in RESERVED_COLUMNS or n.startswith(PROBA_PREFIX))
        if reserved:
            raise ValueError(
                f"features: {reserved} is a column the package writes beside the inputs (request log, model "
                f"answer, prediction files: {', '.join(RESERVED_COLUMNS)}, {PROBA_PREFIX}<class>); rename it"
            )
        for feature in self.features:
            if feature.type == "datetime" and feature.use != "drop":
                parts = feature.parts or ["year", "month", "day", "dayofweek"]
                used = {f.name for f in self.features if f.use != "drop"}
                clash = sorted(used & {f"{feature.name}__{part}" for part in parts})
                if clash:
                    raise ValueError(
                        f"features: {clash} is also the name of a part of datetime feature {feature.name!r} "
                        "(<name>__<part>): its values would be replaced by the date's; rename one of them"
                    )
        if not self.model_features:
            raise ValueError("features: every feature is dropped; the model needs at least one input")
        self._check_label()
        self._check_estimator()
        allowed = self.metric_names
        if self.primary_metric is not None and self.primary_metric not in allowed:
            raise ValueError(
                f"primary_metric: {self.primary_metric!r} does not fit a {self.kind} model; one of {list(allowed)}"
            )
        for metric in self.gate.thresholds:
            if metric not in allowed:
                raise ValueError(f"gate.thresholds: metric {metric!r} does not fit a {self.kind} model")
        if self.threshold is not None:
            if self.kind != "binary":
                raise ValueError(f"threshold: applies to binary models only, this one is {self.kind}")
            if isinstance(self.threshold, float) and not 0.0 < self.threshold < 1.0:
                raise ValueError(f"threshold: {self.threshold} is not a probability in (0, 1)")
        categorical = {f.name for f in self.features if f.type in {"categorical", "boolean"}}
        for column in self.slices:
            if column not in categorical:
                raise ValueError(f"slices: {column!r} is not a categorical or boolean feature")
        for feature in self.features:
            if feature.transformer is not None:
                # where include/ is comes with loading (config), which imports this module: imported here
                from mlops_airflow.core.config import module_file

                module_file(feature.transformer)  # raises when the module is not under include/
        self._check_fairness(categorical)
        return self

    def _check_fairness(self, categorical: set[str]) -> None:
        allowed = fairness_metric_names(self.kind)
        for i, criterion in enumerate(self.fairness):
            if criterion.attribute not in categorical:
                raise ValueError(
                    f"fairness.{i}.attribute: {criterion.attribute!r} is not a categorical or boolean feature "
                    "(a sensitive attribute may be a feature with use: drop)"
                )
            if criterion.metric not in allowed:
                raise ValueError(
                    f"fairness.{i}.metric: {criterion.metric!r} does not fit a {self.kind} model; "
                    f"one of {list(allowed)}"
                )

    def _check_label(self) -> None:
        values = self.label.values
        if self.task == "regression":
            if values is not None or self.label.positive is not None:
                raise ValueError("label: values/positive apply to classification models only")
            return
        if values is None:
            raise ValueError(f"label.values: a {self.task} model needs its list of label values")
        if self.task == "binary" and len(values) != 2:
            raise ValueError(f"label.values: a binary model needs exactly 2 values, got {len(values)}")
        if self.task == "multiclass" and len(values) < 3:
            raise ValueError(f"label.values: a multiclass model needs 3 or more values, got {len(values)}")
        positive = self.label.positive
        if positive is not None:
            if len(values) != 2:
                raise ValueError("label.positive: applies to binary models only")
            if positive not in values or type(positive) is not type(values[0]):
                raise ValueError(f"label.positive: {positive!r} is not one of the label values {values}")
        if self.estimator.sample_weight is not None and self.task == "regression":
            raise ValueError("estimator.sample_weight: 'balanced' applies to classification models only")

    def _check_estimator(self) -> None:
        est = self.estimator
        try:
            entry = check_estimator(est.cls, self.kind if self.kind == "regression" else "classification")
        except EstimatorNotAllowed as err:
            raise ValueError(f"estimator.class: {err}") from None
        if self.kind != "regression" and not entry["predict_proba"] and est.params.get("probability") is not True:
            raise ValueError(
                f"estimator.class: {est.cls} has no predict_proba; the gate and the served model need class "
                "probabilities (choose a probabilistic classifier, or set probability: true where it exists)"
            )
        if est.sample_weight is not None and not entry.get("sample_weight", False):
            raise ValueError(f"estimator.sample_weight: {est.cls} does not take sample weights in fit")
        for where, keys in (("params", list(est.params)), ("search_space", list(est.search_space))):
            unknown = check_params(est.cls, keys)
            if unknown:
                raise ValueError(
                    f"estimator.{where}: {unknown} are not parameters of {est.cls} "
                    f"(it takes {check_params_allowed(est.cls)})"
                )
        _check_n_jobs(est)

    @property
    def kind(self) -> TaskKind:
        """``binary``, ``multiclass`` or ``regression``."""
        if self.task == "regression":
            return "regression"
        if self.task in {"binary", "multiclass"}:
            return self.task  # type: ignore[return-value]
        return "binary" if len(self.label.values or []) == 2 else "multiclass"

    @property
    def is_classifier(self) -> bool:
        return self.kind != "regression"

    @property
    def classes(self) -> list[Any]:
        """Label values in spec order (the order of the probability columns); empty for regression."""
        return list(self.label.values or [])

    @property
    def positive_label(self) -> Any:
        """The positive class of a binary model (``label.positive``, default the second value)."""
        if self.kind != "binary":
            return None
        return self.label.positive if self.label.positive is not None else self.classes[1]

    @property
    def metric_names(self) -> tuple[str, ...]:
        return METRICS_BY_KIND[self.kind]

    @property
    def primary(self) -> str:
        """The primary metric (selection and gate)."""
        return self.primary_metric or DEFAULT_PRIMARY[self.kind]

    @property
    def feature_names(self) -> list[str]:
        """Every feature column the data must carry (validated), model input or not."""
        return [f.name for f in self.features]

    @property
    def input_columns(self) -> list[str]:
        """The columns training and evaluation read from a snapshot (the timestamp, every feature, the label);
        slices and fairness attributes are features. Other landed columns (ids, free text) are never read."""
        return list(dict.fromkeys([self.source.timestamp_column, *self.feature_names, self.label.name]))

    @property
    def text_columns(self) -> list[str]:
        """The columns a training task may read as pandas categoricals (``load_part(categorical=...)``):
        the timestamp and the categorical features. Never the label: its values keep their own type."""
        names = [self.source.timestamp_column, *(f.name for f in self.features if f.type == "categorical")]
        return [n for n in dict.fromkeys(names) if n != self.label.name]

    @property
    def model_features(self) -> list[str]:
        """The columns the model takes as input (features not dropped)."""
        return [f.name for f in self.features if f.use != "drop"]

    @property
    def numeric_features(self) -> list[str]:
        return [f.name for f in self.features if f.type == "numeric" and f.use != "drop"]

    @property
    def categorical_features(self) -> list[str]:
        return [f.name for f in self.features if f.type == "categorical" and f.use != "drop"]

    @property
    def drift_categories(self) -> list[str]:
        """The features the drift report compares as categories: categorical and boolean (not dropped).
        A datetime feature is not compared: its dates move forward by nature."""
        return [f.name for f in self.features if f.type in {"categorical", "boolean"} and f.use != "drop"]

    def feature(self, name: str) -> FeatureSpec:
        return next(f for f in self.features if f.name == name)

    @property
    def ct_schedule(self) -> str | None:
        """The CT schedule in force: ``retrain.schedule`` when the spec sets it (null included), else ``schedule``."""
        return self.retrain.schedule if "schedule" in self.retrain.model_fields_set else self.schedule

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


def _check_n_jobs(est: EstimatorSpec) -> None:
    """``n_jobs`` is null or 1 to :data:`MAX_N_JOBS`: ``-1`` (every core of whatever machine runs the task) would
    take a shared worker's cores from the other candidates and tasks, which the package shares out itself."""
    space = est.search_space.get("n_jobs")
    values = [("params.n_jobs", est.params["n_jobs"])] if "n_jobs" in est.params else []
    if isinstance(space, list):
        values += [("search_space.n_jobs", v) for v in space]
    elif isinstance(space, Distribution):
        if space.distribution != "choice":
            raise ValueError("estimator.search_space.n_jobs: a worker count is chosen from a list, not drawn")
        values += [("search_space.n_jobs", v) for v in space.values or []]
    for where, value in values:
        if value is not None and not (type(value) is int and 1 <= value <= MAX_N_JOBS):
            raise ValueError(
                f"estimator.{where}: {value!r} is not null or a number of workers from 1 to {MAX_N_JOBS} "
                "(-1, every core of the machine, would starve the other tasks of a shared worker)"
            )


def check_params_allowed(path: str) -> list[str]:
    from mlops_airflow.core._sklearn_catalogue import CATALOGUE

    return list(CATALOGUE[path]["params"])
