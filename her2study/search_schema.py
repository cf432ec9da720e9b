"""Typed schemas of the Optuna search (``conf/search/*.yaml``) and of ``task=predict``.

Registered by :func:`her2study.config.register_configs` (``SearchConfig`` as the ``search`` group's
``search_schema``; ``PredictConfig`` as the ``predict`` field of the whole run).

The search space (``space``) is a mapping from a dimension name to a distribution spec::

    ring_width_mm: {type: categorical, choices: [0, 0.5, 1, 1.5, 2, 3]}   # 0 = tumour only
    corr_threshold: {type: float, low: 0.8, high: 0.95, step: 0.05}
    model: {type: categorical, choices: [logistic, ridge, svm, random_forest]}
    svm:                                   # a model's parameters: searched only when model=svm
      C: {type: float, low: 1.0e-2, high: 1.0e2, log: true}
      gamma: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
    random_forest:
      n_estimators: 200                    # a plain value: fixed, not searched

See :mod:`her2study.search` for every dimension name and the checks made on specs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from her2study.choices import ExportSource, Pruner, Sampler


@dataclass
class SearchConfig:
    """Nested cross-validated search over ring width, selection thresholds and model."""

    space: dict[str, Any] = field(default_factory=dict)  # dimension -> spec
    outer_folds: int = 5  # outer stratified K-fold: the estimate the search never sees
    outer_repeats: int = 1  # repeats of the outer K-fold (new shuffles)
    inner_folds: int = 5  # inner stratified K-fold: the objective (mean inner AUC)
    seed: Optional[int] = None  # folds and sampler; null = the run's top-level seed
    n_trials: int = 30  # COMPLETE trials per study (already completed ones count: resume)
    timeout_s: Optional[float] = None  # stop each study's trials after this many seconds
    sampler: Sampler = Sampler.tpe  # tpe | random
    n_startup_trials: int = 10  # TPE: random trials before modelling
    pruner: Pruner = Pruner.none  # none | median | successive_halving: stop trials between folds
    storage: Optional[str] = None  # null = sqlite:///<output_root>/optuna_<study>.db
    output_root: str = "outputs"  # relative to the cwd (not Hydra's run folder): resumable
    n_jobs: int = 1  # parallel trials (threads) within this process
    outer_n_jobs: Optional[int] = 1  # outer folds in parallel processes; null = execution.n_jobs
    reuse: bool = True  # reuse fitted selection steps across trials (same fold, same params)
    cache_mb: int = 1024  # memory bound of the reuse cache, per study
    final: bool = True  # also search on all cases: the configuration to export
    log_trials: bool = False  # an MLflow child run per trial (off: one per outer fold)
    metrics_at: list[float] = field(default_factory=list)  # net benefit at; [] = evaluation's
    use_clinical: bool = False  # clinical columns join the design when not a searched dimension
    export_source: ExportSource = ExportSource.study  # task=export: study (final search) | config
    export_dir: Optional[str] = None  # best_<study>.yaml here; null = <output_root>/configs/exp
    estimate: dict[str, Any] = field(default_factory=dict)  # nested estimate (exported files)
    permutations: int = 0  # permutation test: reruns of the whole nested search, labels permuted
    permutation_trials: Optional[int] = None  # trials per study of a permuted run; null = n_trials


@dataclass
class PredictConfig:
    """``task=predict``: apply an exported model to new cases (``data=manifest`` / ``features``)."""

    model_uri: Optional[str] = None  # model folder / .joblib, or models:/... / runs:/... URI
    output: Optional[str] = None  # predictions CSV; null = <run folder>/predictions.csv
    threshold: Optional[float] = None  # null = the threshold exported with the model
