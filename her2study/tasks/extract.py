"""task=extract: features for the tumour and every configured ring, cached; tables + QA overlays."""

from __future__ import annotations

import logging

from her2study.cohort.source import describe_source
from her2study.tasks.common import (
    cohort_and_features,
    output_dir,
    result_set,
    specs_from_config,
)

log = logging.getLogger(__name__)


def run(cfg) -> int:
    cohort, fs = cohort_and_features(cfg)
    out = output_dir(cfg)
    table = cohort.table.join(fs.table)
    with result_set(out) as stage:  # moved into out at the end: no partial result set
        table.to_parquet(stage / "features.parquet")
        if fs.region_stats is not None:
            fs.region_stats.to_csv(stage / "region_stats.csv", index=False)
        if cfg.region.overlays and cohort.cases:
            write_overlays(cfg, cohort, stage / "overlays")
    log.info(f"{describe_source(cohort)}")
    log.info(
        f"features: {fs.table.shape[0]} cases x {fs.table.shape[1]} columns"
        f" -> {out / 'features.parquet'}"
        f" ({fs.n_cached} region entries from cache, {fs.n_extracted} extracted)"
    )
    return 0


def write_overlays(cfg, cohort, folder) -> None:
    """QA: image + tumour + rings for a spread-out sample of cases."""
    import numpy as np

    from her2study.cohort.io import read_image, read_mask
    from her2study.filenames import safe_filename
    from her2study.regions import RegionMaker, field_of_view, write_overlay

    folder.mkdir(parents=True, exist_ok=True)
    specs = specs_from_config(cfg)
    n = min(cfg.region.overlays, len(cohort.cases))
    picks = np.linspace(0, len(cohort.cases) - 1, n).round().astype(int)
    outer = max((s.outer_mm for s in specs if not s.is_intra), default=0.0)
    for i in picks:
        case = cohort.cases[i]
        image, _ = read_image(case.image, case.spacing_mm)
        mask = read_mask(case.mask, image, cfg.data.mask_label, case.spacing_mm is not None)
        maker = RegionMaker(mask, field_of_view(image, cfg.region.fov), outer)
        regions = {s.name: maker.make(s)[0] for s in specs}
        tag = " (SYNTHETIC)" if cohort.synthetic else ""
        path = folder / safe_filename(case.case_id, ".png")  # never outside ``folder``
        title = str(case.case_id).replace("$", r"\$")  # no mathtext from an id
        write_overlay(image, regions, path, f"{title}{tag}")
    log.info("wrote %d overlays to %s", n, folder)
