"""Candidates: a point of the search space as a scikit-learn pipeline on columns of a design.

The lowest module of :mod:`her2study.search`: what a candidate takes from the run's config
(``selection``, ``model``, ``search.use_clinical``), the pipeline it builds, and the design
(features, clinical columns and labels) whose columns it picks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from her2study.errors import ConfigError
from her2study.models import make_pipeline
from her2study.models.pipeline import SITE_STEP_KEYS

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


# region kinds of a candidate, as ``region.signature_kinds`` and margins.csv's ``kind``
REGION_KINDS = ("tumour", "tumour+ring", "ring", "tumour+band", "band")
DEFAULT_KIND = "tumour+ring"  # without a region_kind dimension: tumour + ring (0 = tumour only)


def parse_band(value) -> tuple[float, float]:
    """``"1.5-2.5"`` (or ``[1.5, 2.5]``) -> (1.5, 2.5): a band ``inner < d <= outer`` mm."""
    try:
        if isinstance(value, str):
            a, b = (float(x) for x in value.split("-"))
        else:
            a, b = (float(x) for x in value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"band {value!r}: write it as 'inner-outer' in mm, e.g. '1.5-2.5'"
        ) from None
    if not 0 <= a < b:
        raise ConfigError(f"band {value!r}: needs 0 <= inner < outer mm")
    return a, b


def band_text(band) -> str:
    a, b = parse_band(band)
    return f"{a:g}-{b:g}"


def region_choice(kind: str, ring_width_mm, band_mm) -> tuple[str, float | None]:
    """(name, outer edge in mm) of a region choice, the names of ``margins.csv``: ``intra`` (0),
    ``intra+ring1mm``, ``ring1mm``, ``intra+band1.5-2.5mm``, ``band1.5-2.5mm``; ``all`` (None)
    for every region of the table (tumour + ring without a ring width)."""
    if kind == "tumour":
        return "intra", 0.0
    if kind in ("tumour+ring", "ring"):
        if ring_width_mm is None:
            if kind == "ring":
                raise ConfigError("region_kind ring needs a ring_width_mm")
            return "all", None
        w = float(ring_width_mm)
        if w == 0:
            if kind == "ring":
                raise ConfigError(
                    "region_kind ring with ring_width_mm 0 is empty (0 = tumour only): drop 0 "
                    "from search.space.ring_width_mm or give it when: {region_kind: tumour+ring}"
                )
            return "intra", 0.0
        return (f"intra+ring{w:g}mm" if kind == "tumour+ring" else f"ring{w:g}mm"), w
    if kind in ("tumour+band", "band"):
        if band_mm is None:
            raise ConfigError(
                f"region_kind {kind} needs a band: search.space.band_mm (e.g. choices "
                "['1.5-2.5']) or exactly one band in region.bands_mm"
            )
        a, b = parse_band(band_mm)
        name = f"band{a:g}-{b:g}mm"
        return (f"intra+{name}" if kind == "tumour+band" else name), b
    raise ConfigError(f"region_kind {kind!r}: kinds are {', '.join(REGION_KINDS)}")


def _region_columns(kind: str, ring_width_mm, band_mm) -> list[str] | None:
    """Column prefixes (region names of the features table) of a region choice; None = all."""
    from her2study.regions import band_spec, ring_spec

    intra = ["intra"] if kind.startswith("tumour") else []
    if kind in ("tumour+ring", "ring"):
        region_choice(kind, ring_width_mm, band_mm)  # checks
        if ring_width_mm is None:
            return None
        w = float(ring_width_mm)
        return intra + ([ring_spec(w).name] if w else [])
    if kind in ("tumour+band", "band"):
        region_choice(kind, ring_width_mm, band_mm)
        return intra + [band_spec(*parse_band(band_mm)).name]
    return intra


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
    region_kind: str = DEFAULT_KIND  # tumour | tumour+ring | ring | tumour+band | band
    band_mm: str | None = None  # "inner-outer" mm, for the band kinds

    def as_dict(self) -> dict:
        return {
            "ring_width_mm": self.ring_width_mm,
            "use_clinical": self.use_clinical,
            "selection": dict(self.selection),
            "model": self.model,
            "model_params": dict(self.model_params),
            "region_kind": self.region_kind,
            "band_mm": self.band_mm,
        }

    def region(self) -> tuple[str, float | None]:
        """(name, outer edge mm) of the candidate's region choice (:func:`region_choice`)."""
        return region_choice(self.region_kind, self.ring_width_mm, self.band_mm)

    def label(self) -> str:
        if self.region_kind == DEFAULT_KIND:
            ring = "all" if self.ring_width_mm is None else f"{self.ring_width_mm:g}mm"
        else:
            ring = self.region()[0]
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
    """The ``selection`` keys a candidate carries: the searchable ones and, when switched on,
    the contour-robustness filter's and ComBat's (left out when off, so that a search without
    them keeps the studies and digests it had)."""
    sel = _plain(cfg.selection)
    out = {k: sel[k] for k in SELECTION_DIMS if k in sel}
    on = {"robustness": sel.get("robustness_threshold") is not None}
    on["harmonise"] = sel.get("harmonise") is not None
    for k in SITE_STEP_KEYS:
        if k in sel and on[k.split("_", 1)[0]]:
            out[k] = sel[k]
    return out


def config_band(cfg) -> str | None:
    """The band of ``region.bands_mm`` when there is exactly one (``"1.5-2.5"``), else None."""
    bands = list(OmegaConf.select(cfg, "region.bands_mm", default=None) or [])
    return band_text(bands[0]) if len(bands) == 1 else None


def search_defaults(cfg) -> dict:
    """Values of the dimensions that are not searched."""
    return {
        "model": cfg.model.name,
        "use_clinical": bool(cfg.search.use_clinical),
        "region_kind": DEFAULT_KIND,
        "band_mm": config_band(cfg),
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
        "region_kind": DEFAULT_KIND,
        "band_mm": config_band(cfg),
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
    kind = str(params.get("region_kind", base.get("region_kind", DEFAULT_KIND)))
    ring = params.get("ring_width_mm") if kind in ("tumour+ring", "ring") else None
    band = params.get("band_mm", base.get("band_mm")) if kind.endswith("band") else None
    if kind == "tumour":
        ring = 0.0
    return Candidate(
        ring_width_mm=None if ring is None else float(ring),
        use_clinical=bool(params.get("use_clinical", base["use_clinical"])),
        selection=selection,
        model=model,
        model_params=model_params,
        region_kind=kind,
        band_mm=None if band is None else band_text(band),
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


def build_pipeline(cand: Candidate, seed: int, design: Design | None = None):
    """The unfitted scikit-learn Pipeline of a candidate (the one factory every task uses);
    ``design`` gives ComBat's side inputs (each case's site, the covariates) and the clinical
    columns it leaves unchanged."""
    if design is None:
        return make_pipeline(cand.selection, cand.model, cand.model_params, int(seed))
    return make_pipeline(
        cand.selection,
        cand.model,
        cand.model_params,
        int(seed),
        sites=design.sites,
        covariates=design.covariates,
        passthrough=design.clinical if cand.use_clinical else (),
    )


@dataclass
class Design:
    """Features (+ clinical columns) and labels the search works on; with ``data.site_column``
    each case's site (the outer folds by site, ComBat's batch) and ComBat's covariates."""

    X: pd.DataFrame
    y: pd.Series
    regions: dict[str, list[str]]  # region name (column prefix) -> columns (perturbed included)
    clinical: list[str]
    synthetic: bool = False
    source: str = ""
    sites: pd.Series | None = None  # case id -> site (str); never a column of X
    covariates: pd.DataFrame | None = None  # case id -> selection.harmonise_covariates

    @classmethod
    def from_tables(
        cls,
        features: pd.DataFrame,
        y: pd.Series,
        clinical: pd.DataFrame | None,
        synthetic: bool = False,
        source: str = "",
        outside_exclude=(),
        sites: pd.Series | None = None,
        covariates: pd.DataFrame | None = None,
    ) -> Design:
        """``outside_exclude``: feature classes left out of ring and band regions
        (``region.ring_exclude_classes``, shape2D by default: a ring's shape is the tumour's).
        Perturbed copies (``perturb<k>__<column>``, the contour-robustness filter's input) belong
        to their column's region."""
        from her2study.selection.robustness import column_region

        # the second reader's features (reader2__*, for the ICC) are never predictors
        features = features[[c for c in features.columns if not str(c).startswith("reader2__")]]
        if outside_exclude:
            features = features[
                [
                    c
                    for c in features.columns
                    if column_region(str(c)) == "intra"
                    or not any(f"_{k}_" in str(c) for k in outside_exclude)
                ]
            ]
        regions: dict[str, list[str]] = {}
        for c in features.columns:
            regions.setdefault(column_region(str(c)), []).append(c)
        clin = list(clinical.columns) if clinical is not None else []
        X = features.join(clinical) if clin else features.copy()
        X = X.loc[y.index]
        return cls(
            X=X,
            y=y.astype(int),
            regions=regions,
            clinical=clin,
            synthetic=synthetic,
            source=source,
            sites=None if sites is None else sites.loc[y.index].astype(str),
            covariates=None if covariates is None else covariates.loc[y.index],
        )

    def columns(self, cand: Candidate) -> list[str]:
        names = _region_columns(cand.region_kind, cand.ring_width_mm, cand.band_mm)
        if names is None:
            names = list(self.regions)
        missing = [n for n in names if n not in self.regions]
        if missing:
            raise ConfigError(
                f"no feature columns for region(s) {missing} (found: {sorted(self.regions)}); "
                "extract them with region.ring_widths_mm / region.bands_mm, or change "
                "search.space.ring_width_mm / band_mm / region_kind"
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

    def check_space(self, dims: list[Dim], defaults: dict | None = None) -> None:
        """Every region choice of the space has features; clinical columns exist when needed."""
        from her2study.regions import band_spec, ring_spec

        for choice in space_regions(dims, defaults or {}):
            kind, w, band = choice
            names = _region_columns(kind, w, band) or []
            if "intra" in names and "intra" not in self.regions:
                raise ConfigError(
                    "search.space.ring_width_mm / region_kind needs tumour features "
                    "(columns intra_*): set region.include_intra=true"
                )
            missing = [n for n in names if n not in self.regions]
            if missing and kind.endswith("band"):
                have = sorted(r for r in self.regions if r.startswith("band"))
                raise ConfigError(
                    f"search.space.band_mm: no features for band {band} mm "
                    f"({band_spec(*parse_band(band)).name}; bands in the features: {have}); add "
                    f"it to region.bands_mm (e.g. 'region.bands_mm=[[{band.replace('-', ',')}]]') "
                    "or drop it from the space"
                )
            if missing:
                have = sorted(r for r in self.regions if r.startswith("peri"))
                raise ConfigError(
                    f"search.space.ring_width_mm: no features for width(s) [{w:g}] mm "
                    f"({ring_spec(w).name}; rings in the features: {have}); add them to "
                    f"region.ring_widths_mm (e.g. 'region.ring_widths_mm=[0.5,1,1.5,2,3]') or "
                    "drop them from the space"
                )
        for dim in dims:
            values = dim.choices if dim.kind == "categorical" else (dim.value,)
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


def _values(dims: list[Dim], name: str, defaults: dict) -> tuple | None:
    for dim in dims:
        if dim.name == name:
            return tuple(dim.choices if dim.kind == "categorical" else (dim.value,))
    return None if name not in defaults else (defaults[name],)


def space_regions(dims: list[Dim], defaults: dict) -> list[tuple]:
    """Every (region_kind, ring_width_mm, band_mm) the space can give, without duplicates by
    region name, in the space's order (ring width: None = every region of the table)."""
    kinds = _values(dims, "region_kind", defaults) or (DEFAULT_KIND,)
    widths = _values(dims, "ring_width_mm", {})
    bands = _values(dims, "band_mm", defaults) or (None,)
    out, seen = [], set()
    for kind in kinds:
        if kind in ("tumour+ring", "ring"):
            combos = [(kind, None if w is None else float(w), None) for w in (widths or (None,))]
        elif kind in ("tumour+band", "band"):
            combos = [(kind, None, None if b is None else band_text(b)) for b in bands]
        else:
            combos = [(kind, 0.0, None)]
        for combo in combos:
            name = region_choice(*combo)[0]
            if name not in seen:
                seen.add(name)
                out.append(combo)
    return out


def permuted_design(design: Design, seed: int, k: int) -> Design:
    """The design with its labels permuted, seeded by ``seed`` and ``k``: a plain permutation,
    or within each site when the design has sites (each site keeps its class counts, so every
    held-out site of an outer loop by site still has both classes, and a site-label association
    is part of the null, not of the signal tested)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 104_729, int(k)]))
    values = design.y.to_numpy().copy()
    if design.sites is None:
        values = rng.permutation(values)
    else:
        for site in sorted(set(design.sites)):
            at = np.flatnonzero((design.sites == site).to_numpy())
            values[at] = rng.permutation(values[at])
    y = pd.Series(values, index=design.y.index, name=design.y.name)
    return dataclasses.replace(design, y=y)
