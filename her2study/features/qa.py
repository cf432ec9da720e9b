"""Image-level quality checks of the analysed regions, beside the extraction's region table.

* :func:`annotation_qa`: burned-in annotations (calipers, text, colour marks) inside each case's
  tumour and rings, as columns ``annotation_px`` / ``_fraction`` / ``_flagged`` of the QA table
  (``region_stats``), with one warning per flagged case and the fix.
* :func:`check_derived_bins`: how many grey-level bins each derived image type (LBP, wavelet,
  LoG, ...) keeps inside the regions with its own pyradiomics settings; an image type left with
  two bins or fewer in most regions only measures the mask's geometry, and the warning names the
  image type and the setting that fixes it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from her2study.cohort.annotations import (
    COLOUR_CHROMA,
    EDGE_CONTRAST,
    MIN_PIXELS,
    NEAR_MAX,
    overlay_pixels,
)
from her2study.cohort.io import read_chroma, read_image, read_mask
from her2study.cohort.manifest import Cohort
from her2study.digest import canonical_digest, file_digest
from her2study.features.cache import FeatureCache
from her2study.regions import REGION_VERSION, RegionMaker, RegionSpec, field_of_view

log = logging.getLogger(__name__)

QA_COLUMNS = ["annotation_px", "annotation_fraction", "annotation_flagged"]
QA_VERSION = 1  # bump when the overlay rule changes (it keys the cached results)
ANNOTATION_FIX = (
    "export the frame without annotations (scanners can store a clean copy), inpaint the marks "
    "before extraction, or exclude the case"
)


def _regions(case, specs, fov_mode, mask_label):
    image, _ = read_image(case.image, case.spacing_mm)
    mask = read_mask(case.mask, image, mask_label, plain_spacing=case.spacing_mm is not None)
    outer = max((s.outer_mm for s in specs if not s.is_intra), default=0.0)
    maker = RegionMaker(mask, field_of_view(image, fov_mode), outer)
    return image, {s.name: maker.make(s)[0] for s in specs}


def _case_overlays(case, specs, fov_mode, mask_label) -> dict:
    """Overlay pixels of one case: per region, in the union of its regions, and the worst."""
    image, regions = _regions(case, specs, fov_mode, mask_label)
    area = np.logical_or.reduce(list(regions.values()))
    gray = sitk.GetArrayViewFromImage(image)
    flagged = overlay_pixels(gray, read_chroma(case.image), area) & area
    counts = {name: int((flagged & region).sum()) for name, region in regions.items()}
    sizes = {name: int(region.sum()) for name, region in regions.items()}
    return {
        "rows": [
            {
                "region": name,
                "annotation_px": n,
                "annotation_fraction": n / sizes[name] if sizes[name] else 0.0,
            }
            for name, n in counts.items()
        ],
        "total": int(flagged.sum()),
        "area": int(area.sum()),
        "worst": max(counts, key=counts.get),
    }


def _qa_key(case, specs, fov_mode, mask_label) -> str:
    return canonical_digest(
        {
            "image": file_digest(case.image),
            "mask": file_digest(case.mask),
            "spacing": list(case.spacing_mm) if case.spacing_mm else None,
            "mask_label": mask_label,
            "regions": [s.as_dict() for s in specs],
            "fov": fov_mode,
            "region_version": REGION_VERSION,
            "rule": [NEAR_MAX, EDGE_CONTRAST, COLOUR_CHROMA, QA_VERSION],
        }
    )


def annotation_qa(
    cohort: Cohort,
    specs: list[RegionSpec],
    fov_mode: str = "nonzero",
    mask_label: int | None = None,
    cache_root: str | Path | None = None,
    n_jobs: int = 1,
) -> tuple[pd.DataFrame, list[str]]:
    """Overlay pixels per case and region, and one warning per flagged case.

    Returns ``(table, warnings)``: the table has ``case_id``, ``region`` and :data:`QA_COLUMNS`
    (``annotation_px`` = overlay pixels inside the region, ``annotation_fraction`` = their share
    of the region's pixels, ``annotation_flagged`` = the case has at least :data:`MIN_PIXELS`
    overlay pixels in the union of its regions, the tumour and its widest ring). With
    ``cache_root`` each case's result is kept in ``<cache_root>/qa/`` (keyed by the files' bytes
    and the regions); cases not in the cache are checked on ``n_jobs`` processes.
    """
    from joblib import Parallel, delayed

    cache = FeatureCache(Path(cache_root) / "qa") if cache_root is not None else None
    keys = [
        _qa_key(c, specs, fov_mode, mask_label) if cache is not None else "" for c in cohort.cases
    ]
    results = [cache.get(k) if cache is not None else None for k in keys]
    todo = [i for i, r in enumerate(results) if r is None]
    fresh = Parallel(n_jobs=n_jobs if len(todo) > 1 else 1)(
        delayed(_case_overlays)(cohort.cases[i], specs, fov_mode, mask_label) for i in todo
    )
    for i, result in zip(todo, fresh, strict=True):
        results[i] = result
        if cache is not None:
            cache.put(keys[i], result)
    rows, notes = [], []
    for case, result in zip(cohort.cases, results, strict=True):
        total = result["total"]
        flag = total >= MIN_PIXELS
        rows += [
            {"case_id": case.case_id, **row, "annotation_flagged": flag} for row in result["rows"]
        ]
        if flag:
            notes.append(
                f"case {case.case_id} [{case.image.name}]: {total} pixels of burned-in annotation "
                f"(calipers, text or colour marks) inside the analysed regions "
                f"({100 * total / max(result['area'], 1):.1f}% of them; most in "
                f"{result['worst']}): their features measure the overlay, not tissue -> fix: "
                f"{ANNOTATION_FIX}"
            )
    return pd.DataFrame(rows, columns=["case_id", "region", *QA_COLUMNS]), notes


def annotation_summary(region_stats: pd.DataFrame | None) -> str:
    """One line for the report: how many cases carry burned-in annotations, and the fix."""
    if region_stats is None or "annotation_px" not in region_stats.columns:
        return "not checked (features supplied, no images)"
    flags = region_stats.groupby("case_id", sort=False)["annotation_flagged"].any()
    flagged = list(flags.index[flags])
    if not flagged:
        return (
            f"checked in {len(flags)} cases (sharp-edged marks at the maximum grey level and "
            "coloured pixels inside the tumour and rings): none found"
        )
    shown = ", ".join(map(str, flagged[:10])) + (" ..." if len(flagged) > 10 else "")
    return (
        f"{len(flagged)} of {len(flags)} cases carry burned-in annotations inside the tumour "
        f"or rings ({shown}); counts per region in region_stats (annotation_px). Fix: "
        f"{ANNOTATION_FIX}"
    )


# ------------------------------------------------------------------------------------------
# derived images: grey-level bins inside the regions


def _occupied_bins(values: np.ndarray, settings: dict) -> int:
    from radiomics import imageoperations

    edges = imageoperations.getBinEdges(values, **settings)
    return int(np.count_nonzero(np.histogram(values, edges)[0]))


def derived_bin_counts(image: sitk.Image, region: np.ndarray, params: dict) -> dict[str, int]:
    """Occupied grey-level bins inside ``region`` of every image type of ``params`` (original
    and derived), each discretised with its own settings as pyradiomics does."""
    from radiomics import imageoperations

    from her2study.features.extraction import build_extractor

    extractor = build_extractor(params)
    settings = dict(extractor.settings)
    roi = sitk.GetImageFromArray(region.astype(np.uint8))
    roi.CopyInformation(image)
    image, roi = extractor.loadImage(image, roi, None, **settings)
    out: dict[str, int] = {}
    for image_type, custom in extractor.enabledImagetypes.items():
        args = {**settings, **(custom or {})}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for filtered, name, kwargs in getattr(imageoperations, f"get{image_type}Image")(
                image, roi, **args
            ):
                inside = sitk.GetArrayViewFromImage(roi) == settings.get("label", 1)
                values = sitk.GetArrayViewFromImage(filtered)[inside]
                out[f"{image_type}:{name}"] = _occupied_bins(values, kwargs)
    return out


def check_derived_bins(
    cohort: Cohort,
    specs: list[RegionSpec],
    params: dict,
    fov_mode: str = "nonzero",
    mask_label: int | None = None,
    n_cases: int = 3,
    cache_root: str | Path | None = None,
) -> list[str]:
    """Warnings for image types that keep <= 2 grey-level bins in most regions of a few cases
    spread over the cohort (the tumour and the widest ring of each); with ``cache_root`` the bin
    counts are kept in ``<cache_root>/qa/`` (keyed by those cases' files and the settings)."""
    if not cohort.cases:
        return []
    picks = np.unique(np.linspace(0, len(cohort.cases) - 1, n_cases).round().astype(int))
    widest = max(specs, key=lambda s: (not s.is_intra, s.outer_mm or 0.0))
    used = [s for s in specs if s.is_intra] + ([widest] if not widest.is_intra else [])
    cache = FeatureCache(Path(cache_root) / "qa") if cache_root is not None else None
    key = ""
    if cache is not None:
        cases = [cohort.cases[i] for i in picks]
        key = canonical_digest(
            {"bins": [_qa_key(c, used, fov_mode, mask_label) for c in cases], "params": params}
        )
    counts = cache.get(key) if cache is not None else None
    if counts is None:
        counts = {}
        for i in picks:
            image, regions = _regions(cohort.cases[i], used, fov_mode, mask_label)
            for region in regions.values():
                if region.sum() < 4:
                    continue
                for name, n in derived_bin_counts(image, region, params).items():
                    counts.setdefault(name, []).append(n)
        if cache is not None:
            cache.put(key, counts)
    setting = params.get("setting", {}) or {}
    notes = []
    reported: set[str] = set()
    for key, values in counts.items():
        image_type, name = key.split(":", 1)
        if image_type in reported or np.median(values) > 2:
            continue
        reported.add(image_type)
        custom = (params.get("imageType", {}) or {}).get(image_type) or {}
        rule = {k: custom[k] for k in ("binWidth", "binCount") if k in custom} or {
            k: setting[k] for k in ("binWidth", "binCount") if k in setting
        }
        shown = ", ".join(f"{k}={v}" for k, v in rule.items()) or "binWidth=25 (default)"
        hint = "{binWidth: 1}" if image_type == "LBP2D" else "{binCount: 32}"
        notes.append(
            f"image type {image_type} ({name}): {int(np.median(values))} grey-level bin(s) "
            f"inside most regions ({len(values)} regions of {len(picks)} cases) with {shown}: "
            f"its texture features are near-constant and measure the mask's geometry -> fix: "
            f"give it its own setting in the pyradiomics params, imageType: {{{image_type}: "
            f"{hint}}} (conf/extractor/paper.yaml does for LBP2D), or drop the image type"
        )
    return notes
