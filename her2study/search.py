"""Nested cross-validated search: which ring width, selection thresholds and model?

The paper chose its margins and thresholds once, on one split. Here the choice itself is
cross-validated:

* **Outer loop** -- repeated stratified K-fold (``search.outer_folds`` x ``search.outer_repeats``,
  ``search.seed``). Each outer test fold is used once, to score the configuration chosen on the
  other folds; the search never sees it.
* **Inner loop** -- inside each outer training fold an Optuna study (TPE by default, seeded)
  maximises the mean inner stratified K-fold AUC (``search.inner_folds``) over the space
  (``search.space``); its best trial is refitted on the whole outer training fold and scored on
  the outer test fold.
* **Estimate** -- mean outer AUC with a t-interval across the outer folds, and the AUC of the
  pooled out-of-fold predictions (averaged over repeats) with a DeLong CI, its calibration
  (slope, intercept, Hosmer-Lemeshow) and decision curve; how often each ring width and model
  won; how often each feature was selected.
* **Final configuration** -- one more study on all cases gives the configuration to export
  (``task=export``). Its performance estimate is the nested one, not its own (optimistic) CV
  score.

Dimensions of ``search.space`` (any subset; absent ones keep the run's config):

=====================  ==========================================================================
``ring_width_mm``      tumour + the ring of this width (its features must be extracted:
                       ``region.ring_widths_mm``); ``0`` = tumour only. Absent: every region of
                       the features table.
``use_clinical``       ``true``: the clinical columns join the design and go through the same
                       selection (absent: ``search.use_clinical``)
``corr_threshold``,    ``selection.*`` keys of the same name: ``corr_method``, ``corr_rule``,
``mw_alpha``, ...      ``mw_alpha``, ``mw_correction``, ``lasso_rule``, ``lasso_scoring``,
                       ``lasso_n_lambdas``, ``lasso_cv``, ``max_features``
``model``              ``logistic``, ``lasso_logistic``, ``ridge``, ``svm``, ``random_forest``
``<model>.<param>``    a parameter of that model's estimator (of the inner ``SVC`` for ``svm``),
                       searched only in trials where ``model`` is ``<model>``; written nested
                       (``svm: {C: {...}}``) or dotted (``svm.C: {...}``)
=====================  ==========================================================================

A spec is ``{type: categorical, choices: [...]}``, ``{type: float, low, high, log?, step?}``,
``{type: int, low, high, log?, step?}`` or a plain value (fixed, not searched); any spec may add
``when: {dimension: value or [values]}`` to be searched only in trials where those hold. ``null``
removes a dimension: Hydra merges command-line overrides into the default space, so
``search.space.use_clinical=null`` drops it, and ``search.space.model.choices=[logistic,svm]``
narrows one (a whole other space is best a file ``conf/search/<name>.yaml``, ``search=<name>``).

Speed: the inner folds are the same for every trial of a study, so each fitted prefix of the
pipeline (z-scoring + correlation filter, + Mann-Whitney, + LASSO, + model) is memoised by
(fold, columns, the parameters of the steps so far) and reused by every later trial that shares
it (``search.reuse``); discrete thresholds (``step``, or categorical) make such reuse frequent.
Trials can run in threads (``search.n_jobs``), and several processes can share a study.

Storage (``search.storage``): ``null`` = ``sqlite:///<search.output_root>/optuna_<study>.db``
relative to the current folder (not Hydra's per-run folder, so a rerun resumes); any SQLAlchemy
URL (``sqlite:////abs/path.db``, ``postgresql+psycopg2://user:pw@host/db`` for a cluster); or
``journal:///relative/file.log`` / ``journal:////absolute/file.log`` (Optuna's JournalStorage on
a file: several workers on one machine or on NFS without a database server). Studies are named
``<study>/outer<r>_<k>`` and ``<study>/final``; trials already COMPLETE count toward
``search.n_trials``, so a killed search resumes where it stopped and two processes with the same
storage and study share the work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold

from her2study.errors import ConfigError
from her2study.models import MODELS, make_radiomics_pipeline

log = logging.getLogger(__name__)

__all__ = [
    "Candidate",
    "Design",
    "Dim",
    "InnerCV",
    "NestedResult",
    "build_pipeline",
    "candidate_from_config",
    "candidate_from_params",
    "nested_search",
    "open_storage",
    "open_study",
    "parse_space",
    "run_study",
    "storage_url",
]

SELECTION_DIMS = (
    "corr_threshold",
    "corr_method",
    "corr_rule",
    "mw_alpha",
    "mw_correction",
    "lasso_rule",
    "lasso_scoring",
    "lasso_n_lambdas",
    "lasso_cv",
    "max_features",
)
STUDY_DIMS = ("ring_width_mm", "use_clinical", "model")
SPEC_KEYS = {"type", "choices", "low", "high", "log", "step", "when"}
SAMPLERS = ("tpe", "random")
FIT_ERRORS = (ValueError, ArithmeticError, np.linalg.LinAlgError)
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # who ran a trial (several workers)


# ------------------------------------------------------------------------------------------
# The space
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dim:
    """One dimension of the search space."""

    name: str  # ring_width_mm, corr_threshold, model, svm.C, ...
    kind: str  # categorical | float | int | fixed
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    value: Any = None  # kind == fixed
    when: tuple = ()  # ((dimension, (allowed values...)), ...)

    def distribution(self):
        import optuna.distributions as d

        if self.kind == "categorical":
            return d.CategoricalDistribution(list(self.choices))
        if self.kind == "float":
            return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return d.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return None


def _plain(x):
    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


def _flatten_space(space: dict, prefix: str = "") -> dict[str, Any]:
    """Nested model namespaces (``svm: {C: {...}}``) become dotted names (``svm.C``)."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        name = f"{prefix}{key}"
        if spec is None:  # removed (Hydra merges overrides into the default space)
            continue
        is_namespace = (
            isinstance(spec, dict) and "type" not in spec and not prefix and key in MODELS
        )
        if is_namespace:
            out.update(_flatten_space(spec, f"{name}."))
        else:
            out[name] = spec
    return out


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _estimator_params(model: str) -> set[str]:
    pipe = make_radiomics_pipeline(model=model)
    params = pipe.get_params()
    if model == "svm":
        pre = "clf__estimator__"
    elif model == "lasso_logistic":
        pre = "lasso__"
    else:
        pre = "clf__"
    return {k[len(pre) :] for k in params if k.startswith(pre) and "__" not in k[len(pre) :]}


def parse_space(space, defaults: dict | None = None) -> list[Dim]:
    """Check ``search.space`` and return its dimensions, conditions before the dimensions they
    govern. Every problem raises :class:`ConfigError` naming the key.

    ``defaults`` gives the value of a non-searched dimension named in a ``when`` (e.g. ``model``
    from ``model.name``), so a condition that can never hold is reported.
    """
    space = _plain(space) or {}
    if not isinstance(space, dict):
        raise ConfigError(f"search.space must be a mapping of dimension -> spec, got {space!r}")
    defaults = dict(defaults or {})
    flat = _flatten_space(space)
    dims: dict[str, Dim] = {}
    for name, spec in flat.items():
        dims[name] = _parse_dim(name, spec)
    # conditions refer to categorical (or fixed) dimensions, or to the config's fixed values
    for dim in dims.values():
        for cond, allowed in dim.when:
            key = f"search.space.{dim.name}.when.{cond}"
            if cond == dim.name:
                raise ConfigError(f"{key}: a dimension cannot depend on itself")
            if cond in dims:
                other = dims[cond]
                values = other.choices if other.kind == "categorical" else (other.value,)
                if other.kind in ("float", "int"):
                    raise ConfigError(
                        f"{key}: conditions need a categorical dimension, '{cond}' is {other.kind}"
                    )
                if not set(allowed) & set(values):
                    raise ConfigError(
                        f"{key}: {list(allowed)} never occurs; '{cond}' takes {list(values)}"
                    )
            elif cond in defaults:
                if defaults[cond] not in allowed:
                    raise ConfigError(
                        f"search.space.{dim.name} applies only when {cond} is in {list(allowed)},"
                        f" but {cond} is not searched and is {defaults[cond]!r}: add '{cond}' to"
                        f" search.space or remove {dim.name}"
                    )
            else:
                raise ConfigError(
                    f"{key}: '{cond}' is not a dimension of search.space "
                    f"(dimensions: {sorted(dims)})"
                )
    # order: a dimension after every dimension its conditions name
    ordered: list[Dim] = []
    placed: set[str] = set()
    pending = list(dims.values())
    while pending:
        progressed = False
        for dim in list(pending):
            if all(c not in dims or c in placed for c, _ in dim.when):
                ordered.append(dim)
                placed.add(dim.name)
                pending.remove(dim)
                progressed = True
        if not progressed:
            raise ConfigError(
                f"search.space: circular 'when' conditions between {[d.name for d in pending]}"
            )
    return ordered


def _parse_dim(name: str, spec) -> Dim:
    key = f"search.space.{name}"
    model = name.split(".", 1)[0] if "." in name else None
    if model is not None:
        if model not in MODELS:
            raise ConfigError(f"{key}: '{model}' is not a model (models: {', '.join(MODELS)})")
        param = name.split(".", 1)[1]
        valid = _estimator_params(model)
        if param not in valid:
            raise ConfigError(
                f"{key}: '{param}' is not a parameter of the {model} estimator "
                f"(parameters: {', '.join(sorted(valid))})"
            )
    elif name not in SELECTION_DIMS + STUDY_DIMS:
        raise ConfigError(
            f"{key}: unknown dimension '{name}'. Dimensions: {', '.join(STUDY_DIMS)}, "
            f"{', '.join(SELECTION_DIMS)}, or <model>.<parameter> with a model of "
            f"{', '.join(MODELS)}"
        )
    when: dict = {}
    if isinstance(spec, dict):
        unknown = set(spec) - SPEC_KEYS
        if unknown:
            raise ConfigError(
                f"{key}: unknown spec key(s) {sorted(unknown)}; a spec has {sorted(SPEC_KEYS)}"
            )
        when = spec.get("when") or {}
        if not isinstance(when, dict):
            raise ConfigError(f"{key}.when must map a dimension to a value or a list of values")
    conds = {c: tuple(v) if isinstance(v, (list, tuple)) else (v,) for c, v in when.items()}
    if model is not None:
        conds.setdefault("model", (model,))
        if conds["model"] != (model,):
            raise ConfigError(f"{key}: a parameter of {model} is searched only when model={model}")
    when_t = tuple(sorted(conds.items()))

    if not isinstance(spec, dict):
        if not _is_scalar(spec):
            raise ConfigError(
                f"{key}: a fixed value must be a number, string, bool or null, "
                f"got {spec!r}; or give a spec {{type: ...}}"
            )
        dim = Dim(name, "fixed", value=spec, when=when_t)
        _check_values(dim, (spec,))
        return dim
    kind = spec.get("type")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ConfigError(f"{key}.choices must be a non-empty list")
        if not all(_is_scalar(c) for c in choices):
            raise ConfigError(f"{key}.choices must hold numbers, strings, bools or null")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{key}.choices has duplicates: {list(choices)}")
        extra = set(spec) - {"type", "choices", "when"}
        if extra:
            raise ConfigError(f"{key}: {sorted(extra)} do not apply to a categorical dimension")
        dim = Dim(name, "categorical", choices=tuple(choices), when=when_t)
        _check_values(dim, choices)
        return dim
    if kind in ("float", "int"):
        for bound in ("low", "high"):
            v = spec.get(bound)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{key}.{bound} must be a number, got {v!r}")
        low, high = spec["low"], spec["high"]
        if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"{key}: an int dimension needs integer low/high")
        if not low < high:
            raise ConfigError(f"{key}: low ({low}) must be below high ({high})")
        log_ = bool(spec.get("log", False))
        step = spec.get("step")
        if log_ and low <= 0:
            raise ConfigError(f"{key}: log: true needs low > 0")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
                raise ConfigError(f"{key}.step must be a positive number")
            if log_ and kind == "float":
                raise ConfigError(f"{key}: step and log cannot be combined for a float")
        if "choices" in spec:
            raise ConfigError(f"{key}: choices apply to type: categorical only")
        dim = Dim(
            name,
            kind,
            low=low,
            high=high,
            log=log_,
            step=float(step) if step is not None else None,
            when=when_t,
        )
        _check_values(dim, (low, high))
        return dim
    raise ConfigError(f"{key}.type must be categorical, float or int, got {kind!r}")


def _check_values(dim: Dim, values) -> None:
    """Checks of the values a known dimension may take."""
    key = f"search.space.{dim.name}"
    name = dim.name
    bad = None
    if name == "ring_width_mm":
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0]
        why = "ring widths are numbers >= 0 mm (0 = tumour only)"
    elif name == "use_clinical":
        bad = [v for v in values if not isinstance(v, bool)]
        why = "use_clinical takes true/false"
    elif name == "model":
        bad = [v for v in values if v not in MODELS]
        why = f"models are {', '.join(MODELS)}"
    elif name == "corr_threshold":
        bad = [v for v in values if not isinstance(v, (int, float)) or not 0 < v <= 1]
        why = "thresholds are in (0, 1]"
    elif name == "mw_alpha":
        bad = [v for v in values if not isinstance(v, (int, float)) or not 0 < v <= 1]
        why = "alpha is in (0, 1]"
    elif name == "lasso_rule":
        bad = [v for v in values if v not in ("min", "1se")]
        why = "rules are min and 1se"
    elif name == "mw_correction":
        bad = [v for v in values if v not in (None, "fdr_bh", "bonferroni")]
        why = "corrections are null, fdr_bh and bonferroni"
    elif name == "corr_method":
        bad = [v for v in values if v not in ("spearman", "pearson")]
        why = "methods are spearman and pearson"
    if bad:
        raise ConfigError(f"{key}: {bad} not allowed: {why}")


def resolve(dims: list[Dim], sampled: dict, defaults: dict) -> dict:
    """The full assignment of a trial: sampled values, fixed values, only active dimensions."""
    out: dict = {}
    for dim in dims:
        if not _active(dim, out, defaults):
            continue
        out[dim.name] = dim.value if dim.kind == "fixed" else _tidy(dim, sampled[dim.name])
    return out


def _tidy(dim: Dim, value):
    """Stepped floats without binary noise (0.8500000000000001 -> 0.85)."""
    if dim.kind == "float" and dim.step is not None:
        return round(float(value), 10)
    return value


def _active(dim: Dim, current: dict, defaults: dict) -> bool:
    for cond, allowed in dim.when:
        value = current[cond] if cond in current else defaults.get(cond)
        if value not in allowed:
            return False
    return True


def suggest(trial, dims: list[Dim], defaults: dict) -> dict:
    """Sample a trial's values (conditional dimensions only when their conditions hold)."""
    out: dict = {}
    for dim in dims:
        if not _active(dim, out, defaults):
            continue
        if dim.kind == "fixed":
            out[dim.name] = dim.value
        elif dim.kind == "categorical":
            out[dim.name] = trial.suggest_categorical(dim.name, list(dim.choices))
        elif dim.kind == "float":
            out[dim.name] = _tidy(
                dim, trial.suggest_float(dim.name, dim.low, dim.high, log=dim.log, step=dim.step)
            )
        else:
            out[dim.name] = trial.suggest_int(
                dim.name, int(dim.low), int(dim.high), log=dim.log, step=int(dim.step or 1)
            )
    return out


def space_digest(dims: list[Dim]) -> str:
    return hashlib.sha256(
        json.dumps([asdict(d) for d in dims], default=str, sort_keys=True).encode()
    ).hexdigest()[:16]


# ------------------------------------------------------------------------------------------
# Candidates: a point of the space as a pipeline on columns
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A fully specified configuration: columns (ring, clinical), selection, model."""

    ring_width_mm: float | None  # None = every region of the table; 0 = tumour only
    use_clinical: bool
    selection: dict
    model: str
    model_params: dict

    def as_dict(self) -> dict:
        return {
            "ring_width_mm": self.ring_width_mm,
            "use_clinical": self.use_clinical,
            "selection": dict(self.selection),
            "model": self.model,
            "model_params": dict(self.model_params),
        }

    def label(self) -> str:
        ring = "all" if self.ring_width_mm is None else f"{self.ring_width_mm:g}mm"
        params = ",".join(f"{k}={_short(v)}" for k, v in sorted(self.model_params.items()))
        sel = self.selection
        return (
            f"ring={ring} clin={int(self.use_clinical)} corr={_short(sel['corr_threshold'])} "
            f"mw={_short(sel['mw_alpha'])} lasso={sel['lasso_rule']} {self.model}"
            + (f"({params})" if params else "")
        )


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def base_selection(cfg) -> dict:
    sel = _plain(cfg.selection)
    return {k: sel[k] for k in SELECTION_DIMS if k in sel}


def search_defaults(cfg) -> dict:
    """Values of the dimensions that are not searched."""
    return {
        "model": cfg.model.name,
        "use_clinical": bool(cfg.search.use_clinical),
        **base_selection(cfg),
    }


def base_config(cfg) -> dict:
    """What a candidate takes from the run's config for the dimensions that are not searched
    (stored with the final study, so that task=export rebuilds the searched candidate)."""
    return {
        "selection": base_selection(cfg),
        "model": cfg.model.name,
        "model_params": dict(_plain(cfg.model.params) or {}),
        "use_clinical": bool(cfg.search.use_clinical),
    }


def candidate_from_params(params: dict, cfg, base: dict | None = None) -> Candidate:
    """The candidate of a trial's full assignment (see :func:`resolve`) on top of ``base``
    (default: :func:`base_config` of ``cfg``)."""
    base = base or base_config(cfg)
    selection = dict(base["selection"])
    for k in SELECTION_DIMS:
        if k in params:
            selection[k] = params[k]
    model = params.get("model", base["model"])
    model_params = dict(base["model_params"]) if model == base["model"] else {}
    for k, v in params.items():
        if "." in k and k.split(".", 1)[0] == model:
            model_params[k.split(".", 1)[1]] = v
    ring = params.get("ring_width_mm")
    return Candidate(
        ring_width_mm=None if ring is None else float(ring),
        use_clinical=bool(params.get("use_clinical", base["use_clinical"])),
        selection=selection,
        model=model,
        model_params=model_params,
    )


def candidate_from_config(cfg) -> Candidate:
    """The configuration set in ``region``/``selection``/``model``/``search.use_clinical`` (what
    an exported ``best_<study>.yaml`` sets): tumour + the configured rings."""
    widths = [float(w) for w in cfg.region.ring_widths_mm]
    if len(widths) > 1:
        ring = None  # every extracted region
    else:
        ring = widths[0] if widths else 0.0
    return Candidate(
        ring_width_mm=ring,
        use_clinical=bool(cfg.search.use_clinical),
        selection=base_selection(cfg),
        model=cfg.model.name,
        model_params=dict(_plain(cfg.model.params) or {}),
    )


def build_pipeline(cand: Candidate, seed: int):
    """The unfitted scikit-learn Pipeline of a candidate (same construction as task=paper)."""
    from her2study.study import radiomics_pipeline

    sel = SimpleNamespace(**cand.selection)
    model_cfg = SimpleNamespace(name=cand.model, params=dict(cand.model_params))
    return radiomics_pipeline(sel, model_cfg, int(seed))


@dataclass
class Design:
    """Features (+ clinical columns) and labels the search works on."""

    X: pd.DataFrame
    y: pd.Series
    regions: dict[str, list[str]]  # region name (column prefix) -> columns
    clinical: list[str]
    synthetic: bool = False
    source: str = ""

    @classmethod
    def from_tables(
        cls,
        features: pd.DataFrame,
        y: pd.Series,
        clinical: pd.DataFrame | None,
        synthetic: bool = False,
        source: str = "",
    ) -> Design:
        regions: dict[str, list[str]] = {}
        for c in features.columns:
            regions.setdefault(str(c).split("_", 1)[0], []).append(c)
        clin = list(clinical.columns) if clinical is not None else []
        X = features.join(clinical) if clin else features.copy()
        X = X.loc[y.index]
        return cls(
            X=X, y=y.astype(int), regions=regions, clinical=clin, synthetic=synthetic, source=source
        )

    def columns(self, cand: Candidate) -> list[str]:
        from her2study.regions import ring_spec

        if cand.ring_width_mm is None:
            names = list(self.regions)
        elif cand.ring_width_mm == 0:
            names = ["intra"]
        else:
            names = ["intra", ring_spec(cand.ring_width_mm).name]
        missing = [n for n in names if n not in self.regions]
        if missing:
            raise ConfigError(
                f"no feature columns for region(s) {missing} (found: {sorted(self.regions)}); "
                "extract them with region.ring_widths_mm, or change search.space.ring_width_mm"
            )
        cols = [c for n in names for c in self.regions[n]]
        if cand.use_clinical:
            if not self.clinical:
                raise ConfigError(
                    "use_clinical needs clinical columns: set "
                    "data.clinical_columns (or model.clinical.columns)"
                )
            cols += self.clinical
        return cols

    def check_space(self, dims: list[Dim]) -> None:
        """Every ring width of the space has features; clinical columns exist when needed."""
        from her2study.regions import ring_spec

        for dim in dims:
            values = dim.choices if dim.kind == "categorical" else (dim.value,)
            if dim.name == "ring_width_mm":
                if "intra" not in self.regions:
                    raise ConfigError(
                        "search.space.ring_width_mm needs tumour features "
                        "(columns intra_*): set region.include_intra=true"
                    )
                missing = [w for w in values if w and ring_spec(float(w)).name not in self.regions]
                if missing:
                    have = sorted(r for r in self.regions if r.startswith("peri"))
                    raise ConfigError(
                        f"search.space.ring_width_mm: no features for width(s) {missing} mm "
                        f"(rings in the features: {have}); add them to region.ring_widths_mm "
                        f"(e.g. 'region.ring_widths_mm=[0.5,1,1.5,2,3]') or drop them from the "
                        "space"
                    )
            if dim.name == "use_clinical" and True in values and not self.clinical:
                raise ConfigError(
                    "search.space.use_clinical can be true, but there are no "
                    "clinical columns: set data.clinical_columns"
                )

    def digest(self, columns: list[str] | None = None) -> str:
        """Identifies the cohort (case ids and labels) and, given ``columns``, their values."""
        h = hashlib.sha256(json.dumps([list(map(str, self.y.index)), self.y.tolist()]).encode())
        if columns is not None:
            h.update(json.dumps(list(columns)).encode())
            h.update(np.ascontiguousarray(self.X[columns].to_numpy(dtype=np.float64)).tobytes())
        return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------
# Inner CV with reuse of fitted pipeline prefixes
# ------------------------------------------------------------------------------------------


def _param_key(step) -> tuple:
    return (type(step).__name__,) + tuple(
        sorted((k, repr(v)) for k, v in step.get_params(deep=True).items())
    )


def _nbytes(value) -> int:
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    return int(getattr(value, "nbytes", 0) or 0) or (
        int(value.memory_usage(index=False).sum()) if isinstance(value, pd.DataFrame) else 64
    )


class InnerCV:
    """Inner stratified K-fold AUC of candidates on one set of cases.

    With ``reuse=True`` every fitted prefix of the pipeline is memoised per fold, keyed by the
    columns and by the class and parameters of each step so far; a later trial that shares a
    prefix (e.g. the same ring, correlation threshold and Mann-Whitney alpha with another model)
    starts from its outputs. The result equals fitting the whole Pipeline per fold (tested).
    Thread-safe (Optuna ``n_jobs``); the memo is bounded by ``cache_mb`` (least recently used
    entries go first).
    """

    def __init__(
        self,
        design: Design,
        index,
        n_folds: int,
        seed: int,
        reuse: bool = True,
        cache_mb: int = 1024,
    ):
        self.design = design
        self.index = pd.Index(index)
        self.X = design.X.loc[self.index]
        self.y = design.y.loc[self.index]
        self.seed = int(seed)
        minority = int(min(self.y.sum(), len(self.y) - self.y.sum()))
        if minority < n_folds:
            raise ConfigError(
                f"search.inner_folds={n_folds} exceeds the minority class count "
                f"({minority}) of an outer training fold; use fewer folds"
            )
        cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=self.seed)
        self.splits = list(cv.split(np.zeros(len(self.y)), self.y.to_numpy()))
        self.reuse = reuse
        self.cache_bytes = int(cache_mb) * 2**20
        self._memo: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._key_locks: dict = {}
        self.hits = 0
        self.misses = 0
        self.fits = 0

    # -- memo --
    def _cached(self, key, compute):
        with self._lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                self.hits += 1
                return self._memo[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._memo:
                    self.hits += 1
                    return self._memo[key]
            value = compute()
            size = _nbytes(value)
            with self._lock:
                self.misses += 1
                self._memo[key] = value
                self._bytes += size
                while self._bytes > self.cache_bytes and len(self._memo) > 1:
                    _, old = self._memo.popitem(last=False)
                    self._bytes -= _nbytes(old)
                self._key_locks.pop(key, None)
            return value

    def _fold_data(self, i: int, cols: tuple):
        tr, va = self.splits[i]
        return self.X.iloc[tr][list(cols)], self.X.iloc[va][list(cols)], self.y.iloc[tr]

    def _prob_reuse(self, i: int, cols: tuple, cols_key, pipe) -> np.ndarray:
        key: tuple = ("fold", i, cols_key)
        ytr = self.y.iloc[self.splits[i][0]]
        data = None
        for name, step in pipe.steps[:-1]:
            key = key + ((name, _param_key(step)),)
            prev = data

            def fit_step(step=step, prev=prev):
                xtr, xva = prev if prev is not None else self._fold_data(i, cols)[:2]
                fitted = clone(step)
                with self._count():
                    ztr = fitted.fit_transform(xtr, ytr)
                return ztr, fitted.transform(xva)

            data = self._cached(key, fit_step)
        name, final = pipe.steps[-1]
        key = key + ((name, _param_key(final)),)

        def fit_final():
            xtr, xva = data
            fitted = clone(final)
            with self._count():
                fitted.fit(xtr, ytr)
            return fitted.predict_proba(xva)[:, 1]

        return self._cached(key, fit_final)

    @contextlib.contextmanager
    def _count(self, steps: int = 1):
        """Counts fitted pipeline steps (a whole pipeline counts its steps)."""
        yield
        with self._lock:
            self.fits += steps

    def fold_probs(self, cand: Candidate, seed: int | None = None) -> list[np.ndarray]:
        """Predicted probabilities of each inner validation fold."""
        seed = self.seed if seed is None else int(seed)
        cols = tuple(self.design.columns(cand))
        cols_key = (cand.ring_width_mm, cand.use_clinical)
        pipe = build_pipeline(cand, seed)
        out = []
        for i in range(len(self.splits)):
            if self.reuse:
                out.append(self._prob_reuse(i, cols, cols_key, pipe))
            else:
                xtr, xva, ytr = self._fold_data(i, cols)
                fitted = clone(pipe)
                with self._count(len(pipe.steps)):
                    fitted.fit(xtr, ytr)
                out.append(fitted.predict_proba(xva)[:, 1])
        return out

    def score(self, cand: Candidate, seed: int | None = None) -> tuple[float, list[float]]:
        """Mean inner-fold AUC (the objective) and the per-fold AUCs."""
        probs = self.fold_probs(cand, seed)
        aucs = [
            float(roc_auc_score(self.y.iloc[va].to_numpy(), p))
            for (_, va), p in zip(self.splits, probs, strict=True)
        ]
        return float(np.mean(aucs)), aucs


# ------------------------------------------------------------------------------------------
# Optuna: storage, sampler, study
# ------------------------------------------------------------------------------------------


def storage_url(search_cfg, study: str) -> str:
    """``search.storage``, or the default SQLite file under ``search.output_root``."""
    if search_cfg.storage:
        return str(search_cfg.storage)
    root = Path(search_cfg.output_root).resolve()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study)
    return f"sqlite:///{root / f'optuna_{safe}.db'}"


_STORAGES: dict[str, Any] = {}


def open_storage(url: str, create_dirs: bool = False):
    """An Optuna storage for ``url``; :class:`ConfigError` (before any work) when it cannot be
    opened. ``journal:///path`` is a JournalStorage on that file."""
    import optuna

    if url in _STORAGES:
        return _STORAGES[url]
    hint = (
        "search.storage takes sqlite:///relative.db, sqlite:////absolute.db, "
        "postgresql+psycopg2://user:password@host:5432/db (any SQLAlchemy URL), "
        "journal:///path/to/file.log, or null for the default SQLite file"
    )
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"search.storage {url!r} is not a storage URL. {hint}")
    scheme = url.split("://", 1)[0].lower()
    if scheme == "journal":
        if not url.startswith("journal:///"):
            raise ConfigError(
                f"search.storage {url!r}: use journal:///relative/file.log or "
                f"journal:////absolute/file.log. {hint}"
            )
        path = Path(url[len("journal:///") :])  # as SQLAlchemy's sqlite:///: 4 slashes = absolute
        if not str(path) or str(path) == ".":
            raise ConfigError(f"search.storage {url!r} names no file. {hint}")
        _check_folder(path, url, create_dirs)
        from optuna.storages.journal import JournalFileBackend

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    else:
        kwargs: dict = {}
        if scheme == "sqlite":
            rest = url[len("sqlite:///") :].split("?", 1)[0]
            if not url.startswith("sqlite:///") or rest in ("", ":memory:"):
                raise ConfigError(
                    f"search.storage {url!r}: an in-memory or malformed SQLite "
                    f"URL cannot be resumed or shared. {hint}"
                )
            _check_folder(Path(rest), url, create_dirs)
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        storage = _rdb_storage(url, kwargs, hint)
    _STORAGES[url] = storage
    return storage


def _rdb_storage(url: str, kwargs: dict, hint: str):
    """RDBStorage; workers starting together on a new database race to create its tables
    ("already exists", "locked", alembic's "UNIQUE constraint failed"): the loser retries and
    finds them."""
    import optuna

    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as exc:  # bad dialect, missing driver, unreachable server, ...
            text = str(exc).lower()
            racing = ("already exists", "locked", "unique constraint failed")
            if attempt < 5 and any(r in text for r in racing):
                time.sleep(0.2 * (attempt + 1))
                continue
            raise ConfigError(
                f"search.storage {url!r} cannot be opened: {type(exc).__name__}: {exc}. {hint}"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _check_folder(path: Path, url: str, create: bool) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir():
        raise ConfigError(
            f"search.storage {url!r}: folder {str(folder.resolve())!r} does not "
            "exist; create it or choose another path"
        )
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"search.storage {url!r}: {str(path.resolve())!r} is not writable")


class PerTrialSeedSampler:
    """A sampler whose trial ``n`` draws from a sampler seeded with ``seed + n``.

    The search is then deterministic given the trials before it, and two workers sharing a study
    (or a resumed run) never repeat each other's random draws, which one seeded sampler per
    process would do. Model-based samplers (TPE) read the history from the study, so a fresh
    instance per trial loses nothing.
    """

    def __new__(cls, kind: str, seed: int, n_startup_trials: int = 10):
        import optuna

        class _Sampler(optuna.samplers.BaseSampler):
            def __init__(self):
                self._samplers: dict[int, Any] = {}
                self._lock = threading.Lock()

            def _make(self, number: int):
                s = (int(seed) + 7919 * int(number)) % (2**32)
                if kind == "random":
                    return optuna.samplers.RandomSampler(seed=s)
                return optuna.samplers.TPESampler(
                    seed=s, n_startup_trials=n_startup_trials, group=True, multivariate=True
                )

            def _for(self, trial):
                with self._lock:
                    if trial.number not in self._samplers:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                            self._samplers[trial.number] = self._make(trial.number)
                    return self._samplers[trial.number]

            def infer_relative_search_space(self, study, trial):
                return self._for(trial).infer_relative_search_space(study, trial)

            def sample_relative(self, study, trial, search_space):
                return self._for(trial).sample_relative(study, trial, search_space)

            def sample_independent(self, study, trial, param_name, param_distribution):
                return self._for(trial).sample_independent(
                    study, trial, param_name, param_distribution
                )

            def before_trial(self, study, trial):
                self._for(trial).before_trial(study, trial)

            def after_trial(self, study, trial, state, values):
                try:
                    self._for(trial).after_trial(study, trial, state, values)
                finally:
                    with self._lock:
                        self._samplers.pop(trial.number, None)

            def reseed_rng(self):  # the per-trial seeds already differ
                pass

        return _Sampler()


def open_study(storage, name: str, sampler: str, seed: int, n_startup_trials: int, attrs: dict):
    """Create or load study ``name``; refuse to resume a study made with another design."""
    import optuna

    if sampler not in SAMPLERS:
        raise ConfigError(f"search.sampler={sampler!r}: choose one of {', '.join(SAMPLERS)}")
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        load_if_exists=True,
        sampler=PerTrialSeedSampler(sampler, seed, n_startup_trials),
    )
    existing = study.user_attrs
    for key, value in attrs.items():
        if key in existing and existing[key] != value:
            raise ConfigError(
                f"Optuna study '{name}' exists with another {key} ({existing[key]!r}, now "
                f"{value!r}): it was made by a different search. Use another study name "
                f"(study=...), another search.storage, or delete the study "
                f"(optuna delete-study --study-name '{name}' --storage <url>)"
            )
    for key, value in attrs.items():
        if key not in existing:
            study.set_user_attr(key, value)
    return study


def n_complete(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def run_study(
    study, objective, n_trials: int, timeout_s: float | None = None, n_jobs: int = 1
) -> int:
    """Run trials until ``n_trials`` are COMPLETE in the study (counting earlier runs and other
    workers), the timeout passes, or too many fail. Returns the COMPLETE count."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    start = time.monotonic()
    attempts = 0
    while True:
        done = n_complete(study)
        remaining = n_trials - done
        left = None if timeout_s is None else timeout_s - (time.monotonic() - start)
        if remaining <= 0 or (left is not None and left <= 0) or attempts >= 3 * n_trials:
            return done
        attempts += remaining
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=left,
                n_jobs=n_jobs,
                catch=FIT_ERRORS,
                callbacks=[MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE,))],
                gc_after_trial=False,
            )


def make_objective(
    inner: InnerCV, dims: list[Dim], defaults: dict, cfg, seed: int, tracker=None, prefix: str = ""
):
    def objective(trial):
        params = suggest(trial, dims, defaults)
        cand = candidate_from_params(params, cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no feature passes" etc. in weak folds
            value, aucs = inner.score(cand, seed)
        trial.set_user_attr("fold_auc", [round(a, 6) for a in aucs])
        trial.set_user_attr("worker", WORKER)
        if tracker is not None and tracker.enabled:
            with tracker.child(f"{prefix}trial {trial.number}", tags={"kind": "trial"}):
                tracker.log_params({k: v for k, v in params.items()})
                tracker.log_metrics({"inner_auc": value})
        return value

    return objective


def best_params(study, dims: list[Dim], defaults: dict) -> dict:
    return resolve(dims, study.best_trial.params, defaults)


# ------------------------------------------------------------------------------------------
# The nested search
# ------------------------------------------------------------------------------------------


@dataclass
class NestedResult:
    """Everything the nested search produced."""

    folds: pd.DataFrame  # one row per outer fold
    oof: pd.DataFrame  # case_id, repeat, fold, label, prob
    features: pd.DataFrame  # feature, n_selected, frequency
    estimate: dict  # the nested estimate (numbers)
    chosen: dict | None = None  # final search: full assignment
    chosen_candidate: Candidate | None = None
    final_inner_auc: float | None = None
    timings: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)


def _mean_ci(values, alpha: float = 0.05) -> tuple[float, float, float, float]:
    from scipy import stats

    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan"), float("nan")
    sd = float(v.std(ddof=1))
    h = float(stats.t.ppf(1 - alpha / 2, v.size - 1)) * sd / math.sqrt(v.size)
    return m, sd, max(m - h, 0.0), min(m + h, 1.0)  # an AUC stays in [0, 1]


def selected_features(pipe) -> list[str]:
    from her2study.study import selected_coefficients

    return [str(c) for c in selected_coefficients(pipe).index]


def summarise(oof: pd.DataFrame, folds: pd.DataFrame, cfg) -> dict:
    """The nested estimate from outer-fold results and pooled out-of-fold predictions."""
    from her2study.evaluation import (
        auc_delong,
        brier_score,
        calibration_slope_intercept,
        hosmer_lemeshow,
        net_benefit,
    )

    m, sd, lo, hi = _mean_ci(folds["outer_auc"])
    pooled = oof.groupby("case_id").agg(label=("label", "first"), prob=("prob", "mean"))
    y, p = pooled["label"].to_numpy(int), pooled["prob"].to_numpy(float)
    auc = auc_delong(y, p)
    pc = np.clip(p, 1e-9, 1 - 1e-9)
    cal = calibration_slope_intercept(y, pc)
    hl = hosmer_lemeshow(y, pc, groups=int(cfg.evaluation.hl_groups))
    at = list(cfg.search.metrics_at) or list(cfg.evaluation.net_benefit_at)
    nb = net_benefit(y, p, np.asarray(at, dtype=float)) if at else []
    per_repeat = [
        float(auc_delong(g["label"].to_numpy(int), g["prob"].to_numpy(float)).auc)
        for _, g in oof.groupby("repeat")
    ]
    est = {
        "n_cases": int(len(pooled)),
        "n_outer": int(len(folds)),
        "outer_folds": int(cfg.search.outer_folds),
        "outer_repeats": int(cfg.search.outer_repeats),
        "mean_outer_auc": m,
        "sd_outer_auc": sd,
        "mean_outer_auc_ci_low": lo,
        "mean_outer_auc_ci_high": hi,
        "pooled_auc": float(auc.auc),
        "pooled_auc_ci_low": float(auc.ci_low),
        "pooled_auc_ci_high": float(auc.ci_high),
        "pooled_auc_per_repeat": per_repeat,
        "cal_slope": cal["slope"],
        "cal_intercept": cal["intercept"],
        "hl_chi2": float(hl.chi2),
        "hl_p": float(hl.p),
        "brier": brier_score(y, p),
        "mean_inner_auc_of_winners": float(folds["inner_auc"].mean()),
        "ring_width_counts": _counts(folds["ring_width_mm"]),
        "model_counts": _counts(folds["model"]),
    }
    est.update({f"net_benefit_{t:g}": float(v) for t, v in zip(at, nb, strict=True)})
    return est


def _counts(s: pd.Series) -> dict:
    out: dict = {}
    for v in s:
        k = (
            "all"
            if v is None or (isinstance(v, float) and math.isnan(v))
            else (f"{v:g}" if isinstance(v, (int, float)) else str(v))
        )
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def nested_search(
    cfg,
    design: Design,
    storage,
    study_name: str,
    tracker=None,
    final: bool | None = None,
    progress=print,
) -> NestedResult:
    """Run (or resume) the nested search and, when ``final``, the search on all cases."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per outer fold instead
    s = cfg.search
    seed = int(s.seed if s.seed is not None else cfg.seed)
    defaults = search_defaults(cfg)
    dims = parse_space(s.space, defaults)
    design.check_space(dims)
    if s.outer_folds < 2 or s.inner_folds < 2 or s.outer_repeats < 1 or s.n_trials < 1:
        raise ConfigError(
            "search.outer_folds and search.inner_folds must be >= 2, "
            "search.outer_repeats and search.n_trials >= 1"
        )
    y = design.y
    minority = int(min(y.sum(), len(y) - y.sum()))
    if minority < s.outer_folds:
        raise ConfigError(
            f"search.outer_folds={s.outer_folds} exceeds the minority class count ({minority})"
        )
    attrs = {
        "space": space_digest(dims),
        "cohort": design.digest(),
        "design": f"outer {s.outer_folds}x{s.outer_repeats} inner {s.inner_folds} seed {seed}",
        "selection": json.dumps(defaults, sort_keys=True, default=str),
    }
    outer = RepeatedStratifiedKFold(
        n_splits=s.outer_folds, n_repeats=s.outer_repeats, random_state=seed
    )
    rows, oof_rows, selections = [], [], []
    cache_stats = {"hits": 0, "misses": 0, "fits": 0}
    t0 = time.monotonic()
    idx = design.X.index
    for j, (tr, te) in enumerate(outer.split(np.zeros(len(y)), y.to_numpy())):
        r, k = divmod(j, s.outer_folds)
        name = f"{study_name}/outer{r}_{k}"
        t_fold = time.monotonic()
        study = open_study(storage, name, s.sampler, seed + j, s.n_startup_trials, attrs)
        inner = InnerCV(design, idx[tr], s.inner_folds, seed, reuse=s.reuse, cache_mb=s.cache_mb)
        child = (
            tracker.child(f"outer {r}.{k}", tags={"kind": "outer_fold", "repeat": r, "fold": k})
            if tracker is not None
            else contextlib.nullcontext()
        )
        with child:
            objective = make_objective(
                inner,
                dims,
                defaults,
                cfg,
                seed,
                tracker if s.log_trials else None,
                f"outer {r}.{k} ",
            )
            done = run_study(study, objective, s.n_trials, s.timeout_s, s.n_jobs)
            if done == 0:
                raise ConfigError(
                    f"no trial of study '{name}' completed: every configuration "
                    "failed to fit; see the log, or widen search.space"
                )
            params = best_params(study, dims, defaults)
            cand = candidate_from_params(params, cfg)
            cols = design.columns(cand)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe = build_pipeline(cand, seed).fit(design.X.iloc[tr][cols], y.iloc[tr])
                prob = pipe.predict_proba(design.X.iloc[te][cols])[:, 1]
            sel = selected_features(pipe)
            yte = y.iloc[te].to_numpy()
            outer_auc = float(roc_auc_score(yte, prob))
            row = {
                "repeat": r,
                "fold": k,
                "study": name,
                "n_train": len(tr),
                "n_test": len(te),
                "n_trials": done,
                "inner_auc": float(study.best_value),
                "outer_auc": outer_auc,
                "ring_width_mm": cand.ring_width_mm,
                "use_clinical": cand.use_clinical,
                "model": cand.model,
                "n_selected": len(sel),
                "params": json.dumps(params, sort_keys=True, default=str),
                "seconds": round(time.monotonic() - t_fold, 2),
                "cache_hits": inner.hits,
                "cache_misses": inner.misses,
                "fits": inner.fits,
            }
            rows.append(row)
            for key in cache_stats:
                cache_stats[key] += getattr(inner, key)
            selections.append(sel)
            for cid, lab, p in zip(idx[te], yte, prob, strict=True):
                oof_rows.append(
                    {"case_id": cid, "repeat": r, "fold": k, "label": int(lab), "prob": float(p)}
                )
            if tracker is not None:
                tracker.log_params(
                    {
                        "ring_width_mm": cand.ring_width_mm,
                        "model": cand.model,
                        **{f"param.{k2}": v for k2, v in params.items()},
                    }
                )
                tracker.log_metrics(
                    {
                        "inner_auc": row["inner_auc"],
                        "outer_auc": outer_auc,
                        "n_selected": len(sel),
                        "n_trials": done,
                    }
                )
        progress(
            f"outer {r}.{k}: inner AUC {row['inner_auc']:.3f} -> outer AUC {outer_auc:.3f}"
            f"  [{cand.label()}]  ({row['seconds']:.0f} s, {done} trials)"
        )
    folds = pd.DataFrame(rows)
    oof = pd.DataFrame(oof_rows)
    counts: dict[str, int] = {}
    for sel in selections:
        for f in sel:
            counts[f] = counts.get(f, 0) + 1
    features = pd.DataFrame({"feature": list(counts), "n_selected": list(counts.values())})
    if len(features):
        features["frequency"] = features["n_selected"] / len(selections)
        features = features.sort_values(["n_selected", "feature"], ascending=[False, True])
        features = features.reset_index(drop=True)
    else:
        features = pd.DataFrame(columns=["feature", "n_selected", "frequency"])
    estimate = summarise(oof, folds, cfg)
    result = NestedResult(
        folds=folds, oof=oof, features=features, estimate=estimate, cache=cache_stats
    )
    result.timings["nested_s"] = round(time.monotonic() - t0, 2)

    if s.final if final is None else final:
        t1 = time.monotonic()
        name = f"{study_name}/final"
        study = open_study(storage, name, s.sampler, seed + 10_000, s.n_startup_trials, attrs)
        inner = InnerCV(design, idx, s.inner_folds, seed, reuse=s.reuse, cache_mb=s.cache_mb)
        objective = make_objective(
            inner, dims, defaults, cfg, seed, tracker if s.log_trials else None, "final "
        )
        done = run_study(study, objective, s.n_trials, s.timeout_s, s.n_jobs)
        if done == 0:
            raise ConfigError(f"no trial of study '{name}' completed")
        result.chosen = best_params(study, dims, defaults)
        result.chosen_candidate = candidate_from_params(result.chosen, cfg)
        result.final_inner_auc = float(study.best_value)
        study.set_user_attr("nested_estimate", json.loads(json.dumps(estimate, default=float)))
        study.set_user_attr("chosen", json.loads(json.dumps(result.chosen, default=str)))
        study.set_user_attr("seed", seed)
        study.set_user_attr("inner_folds", int(s.inner_folds))
        study.set_user_attr("base", json.loads(json.dumps(base_config(cfg), default=str)))
        study.set_user_attr("chosen_data", design.digest(design.columns(result.chosen_candidate)))
        result.timings["final_s"] = round(time.monotonic() - t1, 2)
        progress(
            f"final search on all {len(idx)} cases: inner AUC {result.final_inner_auc:.3f}"
            f"  [{result.chosen_candidate.label()}]"
        )
    return result


def load_final(storage, study_name: str) -> tuple[dict, dict, dict]:
    """(chosen assignment, nested estimate, all user attrs) of ``<study>/final``."""
    import optuna

    name = f"{study_name}/final"
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ConfigError(
            f"no Optuna study '{name}' in the storage: run the search first "
            f"(python -m her2study +exp=search study={study_name}), or point search.storage at "
            "the storage it used"
        ) from None
    attrs = study.user_attrs
    if "chosen" not in attrs or "nested_estimate" not in attrs:
        raise ConfigError(
            f"study '{name}' has no finished search (no chosen configuration): "
            f"rerun python -m her2study +exp=search study={study_name} to finish it"
        )
    return attrs["chosen"], attrs["nested_estimate"], attrs
