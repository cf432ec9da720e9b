"""Contour perturbations of a tumour mask, for feature robustness without a second reader.

In the spirit of Zwanenburg et al. (Sci Rep 2019, "Assessing robustness of radiomic features by
image perturbation"): each perturbed mask is the original contour grown or shrunk by a fraction
of a millimetre, moved by a smooth random boundary displacement, then rotated and translated a
little about the lesion's centroid. Rings built from a perturbed mask move with it, as a ring
drawn by another reader would.

All magnitudes are in millimetres (pixel spacing may be anisotropic); the draws are seeded by the
spec's seed and a digest of the case key, so a case gets the same perturbations in every run and
on every machine, whatever other cases the cohort holds.
"""

from __future__ import annotations

import hashlib

import numpy as np
from scipy import ndimage

from her2study.config import PerturbSpec

__all__ = ["PerturbSpec", "perturb_mask", "perturbed_masks", "write_perturbed_cohorts"]


def _signed_distance(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Millimetres to the boundary: negative inside the mask, positive outside."""
    inside = mask.astype(bool)
    d_out = ndimage.distance_transform_edt(~inside, sampling=spacing)
    d_in = ndimage.distance_transform_edt(inside, sampling=spacing)
    return np.where(inside, 0.5 * spacing[0] - d_in, d_out - 0.5 * spacing[0])


def _smooth_field(rng, shape, corr_mm: float, spacing) -> np.ndarray:
    field = ndimage.gaussian_filter(
        rng.standard_normal(shape), (corr_mm / spacing[0], corr_mm / spacing[1]), mode="reflect"
    )
    return (field - field.mean()) / (field.std() + 1e-12)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return ndimage.binary_fill_holes(mask)
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def perturb_mask(
    mask: np.ndarray, spacing: tuple[float, float], rng: np.random.Generator, spec: PerturbSpec
) -> np.ndarray:
    """One perturbed copy of a 2D 0/1 mask (rows = y); ``spacing`` is (y, x) in mm."""
    sd = _signed_distance(mask, spacing)
    grow = rng.uniform(-spec.grow_mm, spec.grow_mm)
    shift = spec.displace_mm * _smooth_field(rng, mask.shape, spec.displace_corr_mm, spacing)
    level = sd - grow - shift  # < 0: inside the perturbed contour
    angle = np.radians(rng.uniform(-spec.rotate_deg, spec.rotate_deg))
    t_mm = rng.uniform(-spec.translate_mm, spec.translate_mm, size=2)
    centre = np.array(ndimage.center_of_mass(mask.astype(bool)))
    sy, sx = spacing
    # output pixel p samples input pixel R^-1 (p - c - t) + c, in mm, then back to pixels
    c, s = np.cos(angle), np.sin(angle)
    rot_mm = np.array([[c, s], [-s, c]])
    to_mm, to_px = np.diag([sy, sx]), np.diag([1 / sy, 1 / sx])
    matrix = to_px @ rot_mm @ to_mm
    offset = centre - matrix @ (centre + to_px @ t_mm)
    moved = ndimage.affine_transform(level, matrix, offset=offset, order=1, mode="nearest")
    out = _largest_component(moved < 0)
    if not out.any():  # a tiny lesion eroded away: keep the original contour
        return mask.astype(np.uint8)
    return out.astype(np.uint8)


def case_rng(spec: PerturbSpec, case_key: str) -> np.random.Generator:
    """The case's own generator: the spec's seed and a digest of ``case_key``."""
    digest = int(hashlib.sha256(str(case_key).encode()).hexdigest()[:15], 16)
    return np.random.default_rng(np.random.SeedSequence([int(spec.seed), digest]))


def perturbed_masks(
    mask: np.ndarray, spacing: tuple[float, float], spec: PerturbSpec, case_key: str
) -> list[np.ndarray]:
    """``spec.n`` perturbed copies of ``mask``, the same for the same case key and spec."""
    if spec.n < 1:
        raise ValueError(f"PerturbSpec.n must be at least 1, got {spec.n}")
    rng = case_rng(spec, case_key)
    return [perturb_mask(mask, spacing, rng, spec) for _ in range(spec.n)]


def write_perturbed_cohorts(cohort, spec: PerturbSpec, out_dir, mask_label: int | None = None):
    """``spec.n`` copies of ``cohort`` whose cases' masks are perturbed, written once as NIfTI
    under ``out_dir`` (named by a digest of the mask file, the spec and k; an existing file is
    reused), on the image's grid. Returns the list of cohorts (k = 1..n); the images and the
    manifest's other columns are the originals, user files are only read."""
    from dataclasses import asdict, replace
    from pathlib import Path

    import SimpleITK as sitk

    from her2study.cohort.io import read_image, read_mask
    from her2study.cohort.manifest import Cohort
    from her2study.digest import canonical_digest, file_digest

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    value = int(mask_label) if mask_label is not None else 1
    per_k: list[list] = [[] for _ in range(spec.n)]
    for case in cohort.cases:
        key = canonical_digest([file_digest(case.mask), asdict(spec), value])[:20]
        paths = [out_dir / f"{key}_{k + 1}.nii.gz" for k in range(spec.n)]
        if not all(p.is_file() for p in paths):
            image, _ = read_image(case.image, case.spacing_mm)
            mask = read_mask(
                case.mask, image, mask_label, plain_spacing=case.spacing_mm is not None
            )
            sx, sy = image.GetSpacing()[:2]
            arr = sitk.GetArrayFromImage(mask)
            for path, m in zip(paths, perturbed_masks(arr, (sy, sx), spec, key), strict=True):
                out = sitk.GetImageFromArray((m * value).astype(np.uint8))
                out.CopyInformation(image)
                tmp = path.with_name(f".{path.name}.partial.nii.gz")
                sitk.WriteImage(out, str(tmp), useCompression=True)
                tmp.replace(path)  # atomic: a half-written mask never looks complete
        for k, path in enumerate(paths):
            per_k[k].append(replace(case, mask=path, mask_reader2=None))
    return [
        Cohort(table=cohort.table, source=cohort.source, synthetic=cohort.synthetic, cases=cases)
        for cases in per_k
    ]
