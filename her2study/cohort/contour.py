"""A planted contour-sensitive signal for the synthetic cohort: a thin rim on the drawn contour.

Off by default (``rim_strength_db = 0``: the cohort, its spec record and every random draw are
what they were). When on, label-1 cases get a bright rim ``rim_strength_db * g`` dB (``g`` a
per-case Gamma factor of mean 1 and coefficient of variation ``effect_cv``, drawn from the case's
spare stream, so no other draw changes) on the pixels of reader 1's mask within ``rim_width_mm``
of its edge -- exactly where the contour is drawn. It is added to the displayed (log-compressed)
image, after the point-spread function, so it stays as thin as asked: a feature that lives at the
contour itself (think of a processing halo, or of an annotation drawn into the image), not a
property of the lesion.

Every tumour feature that the rim drives therefore carries the label *and* changes as soon as the
contour moves by a fraction of a millimetre (an eroded mask leaves the rim out, a dilated one
dilutes it with tissue): the known answer of the contour-robustness filter
(``selection.robustness_threshold`` with ``region.perturb``), which should drop these features and
keep the peritumoral band's ring features (their signal spans the whole 0-1 mm band, so moving
the contour by 0.2 mm changes them little). :func:`contour_phantom_spec` is that test bed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from her2study.config import SyntheticSpec

RIM_FIELDS = ("rim_strength_db", "rim_width_mm")  # the spec fields of this module

CONTOUR_PHANTOM = {  # the contour phantom's spec values (besides the default band)
    "rim_strength_db": 12.0,  # a strong rim: the rim-driven tumour features separate clearly
    "rim_width_mm": 0.2,  # one pixel at the default 0.2 mm spacing
    "intra_strength": 0.0,  # no other tumour signal: what separates inside the mask is the rim
    "band_strength": 9.0,  # the peritumoral band (0-1 mm outside the lesion), clearly present
    "er_signal": False,
}


def rim_on(spec: SyntheticSpec) -> bool:
    return float(getattr(spec, "rim_strength_db", 0.0) or 0.0) > 0


def rim_level_db(spec: SyntheticSpec, label: int, rng: np.random.Generator) -> float:
    """The case's rim level in dB: ``rim_strength_db * g`` for label 1, 0 for label 0. ``rng``
    (the case's spare stream) is drawn from only when the rim is on, and for both labels."""
    if not rim_on(spec):
        return 0.0
    k = 1.0 / max(spec.effect_cv, 1e-6) ** 2
    g = float(rng.gamma(k, 1.0 / k))
    return float(spec.rim_strength_db) * g if int(label) == 1 else 0.0


def contour_rim(mask: np.ndarray, spacing: tuple[float, float], width_mm: float) -> np.ndarray:
    """The pixels of ``mask`` within ``width_mm`` of its edge (``spacing`` = (row, column) mm):
    distance to the nearest pixel outside at most ``width_mm`` (an edge pixel's is one spacing)."""
    inside = mask.astype(bool)
    depth = ndimage.distance_transform_edt(inside, sampling=spacing)
    return inside & (depth <= float(width_mm) + 1e-9)


def add_contour_rim(
    gray: np.ndarray, mask: np.ndarray, spacing: tuple, level_db: float, spec: SyntheticSpec
) -> np.ndarray:
    """``gray`` (the display image before rounding, 255 per ``dynamic_range_db``) with
    ``level_db`` added on the contour rim of ``mask``; unchanged (the same array) at 0 dB."""
    if level_db == 0:
        return gray
    rim = contour_rim(mask, spacing, spec.rim_width_mm)
    return gray + rim * (255.0 * level_db / float(spec.dynamic_range_db))


def contour_phantom_spec(**overrides) -> SyntheticSpec:
    """The contour phantom: the default band (0-1 mm) at 9 dB plus a planted rim on the drawn
    contour (:data:`CONTOUR_PHANTOM`), no intratumoral texture signal, no ER signal;
    ``overrides`` set any other field."""
    from her2study.config import SyntheticSpec

    return SyntheticSpec(**{**CONTOUR_PHANTOM, **overrides})
