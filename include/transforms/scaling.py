"""Transformer factories that model YAMLs may name (``transformer: transforms.scaling:quantile_normal``).

Code a model needs lives here, under ``include/``, and is reviewed like DAG code; a YAML only names it.
A factory returns a transformer built from scikit-learn and numpy parts, so the logged model loads with
scikit-learn's own types only.
"""

from __future__ import annotations

from typing import Any


def quantile_normal() -> Any:
    """Map to a normal distribution by the training rows' quantiles (tames long tails), then standardise."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import QuantileTransformer, StandardScaler

    return make_pipeline(QuantileTransformer(n_quantiles=100, output_distribution="normal"), StandardScaler())
