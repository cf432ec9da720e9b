"""Typed schema of the Optuna search (``conf/search/*.yaml``); registered by her2study.config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class SearchConfig:
    """Nested cross-validated search over ring width, selection thresholds and model."""

    space: Dict[str, Any] = field(default_factory=dict)  # dimension -> distribution spec
    outer_folds: int = 5
    outer_repeats: int = 1
    inner_folds: int = 5
    n_trials: int = 30
    timeout_s: Optional[float] = None
    sampler: str = "tpe"
    storage: Optional[str] = None  # null = sqlite file per study under the output root
    n_jobs: int = 1
    log_trials: bool = False
    metrics_at: List[float] = field(default_factory=list)
