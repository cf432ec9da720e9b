"""task=synth: write the synthetic cohort (images, masks, manifest) and say where."""

from __future__ import annotations

import logging

from her2study.cohort.source import ensure_synthetic

log = logging.getLogger(__name__)


def run(cfg) -> int:
    manifest = ensure_synthetic(cfg.data, n_jobs=cfg.execution.n_jobs)
    log.info(f"SYNTHETIC cohort written: {manifest}")
    log.info(f"use it as your own data: data=manifest data.manifest={manifest}")
    return 0
