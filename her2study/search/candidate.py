"""Candidates: a point of the search space as a scikit-learn pipeline on columns of a design.

The lowest module of :mod:`her2study.search`: what a candidate takes from the run's config
(``selection``, ``model``, ``search.use_clinical``), the pipeline it builds, and the design
(features, clinical columns and labels) whose columns it picks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from her2study.errors import ConfigError
from her2study.models import make_pipeline

if TYPE_CHECKING:
    from her2study.search.space import Dim

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


def _plain(x):
    """A config node as plain Python (enum members as their names: what YAML and JSON take)."""
    if OmegaConf.is_config(x):
        return OmegaConf.to_container(x, resolve=True, enum_to_str=True)
    return x


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
    """The unfitted scikit-learn Pipeline of a candidate (the one factory every task uses)."""
    return make_pipeline(cand.selection, cand.model, cand.model_params, int(seed))


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
        # the second reader's features (reader2__*, for the ICC) are never predictors
        features = features[[c for c in features.columns if not str(c).startswith("reader2__")]]
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
