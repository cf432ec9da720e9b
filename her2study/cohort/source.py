"""The cohort a config points at: the synthetic default, a manifest, or a features table."""

from __future__ import annotations

import logging
from pathlib import Path

from her2study.cohort.manifest import DEFAULT_MAX_IMAGE_PIXELS, Cohort, load_cohort
from her2study.cohort.synthetic import SyntheticSpec, spec_fields, write_synthetic_cohort
from her2study.digest import canonical_digest
from her2study.errors import ConfigError

log = logging.getLogger(__name__)


def synthetic_spec(data_cfg) -> SyntheticSpec:
    from omegaconf import OmegaConf

    values = data_cfg.synthetic
    if not isinstance(values, SyntheticSpec):
        values = OmegaConf.to_object(values) if OmegaConf.is_config(values) else values
    if isinstance(values, dict):
        values = SyntheticSpec(**values)
    return values


def ensure_synthetic(data_cfg, n_jobs: int = 1) -> Path:
    """Write the synthetic cohort of this spec (once) and return its manifest path."""
    spec = synthetic_spec(data_cfg)
    out = (
        Path(data_cfg.synthetic_dir)
        / f"n{spec.n_cases}_seed{spec.seed}_{canonical_digest(spec_fields(spec))[:10]}"
    )
    manifest = write_synthetic_cohort(spec, out, n_jobs=n_jobs)
    return Path(manifest)


def load_from_config(data_cfg, n_jobs: int = 1, keep_columns=()):
    """Cohort (and, for a features table, the features) described by ``cfg.data``;
    ``keep_columns`` (e.g. ``split.balance_on``) stay in the cohort table when present.

    Returns ``(cohort, features_or_None)``.
    """
    common = dict(
        case_column=data_cfg.case_column,
        label_column=data_cfg.label_column,
        clinical_columns=list(data_cfg.clinical_columns),
        keep_columns=[c for c in keep_columns if c],
        site_column=getattr(data_cfg, "site_column", None),
    )
    if data_cfg.source == "synthetic":
        manifest = ensure_synthetic(data_cfg, n_jobs)
        cohort = load_cohort(manifest, **common, mask_label=None, synthetic=True)
        return cohort, None
    if data_cfg.source == "manifest":
        cohort = load_cohort(
            data_cfg.manifest,
            **common,
            spacing_mm=data_cfg.spacing_mm,
            mask_label=data_cfg.mask_label,
            max_image_pixels=getattr(data_cfg, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
        )
        return cohort, None
    if data_cfg.source == "features":
        from her2study.cohort.table import load_features_table

        return load_features_table(data_cfg.features_table, **common)
    raise ConfigError(
        f"unknown data.source {data_cfg.source!r}: use synthetic, manifest or features"
    )


def describe_source(cohort: Cohort) -> str:
    """One line for tables, figures and logs: synthetic or which file."""
    if cohort.synthetic:
        return "SYNTHETIC cohort (simulated ultrasound; not clinical data)"
    return f"cohort from {cohort.source}"
