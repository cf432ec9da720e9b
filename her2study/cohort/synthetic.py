"""A synthetic breast-ultrasound cohort with a known right answer.

No public ultrasound data set carries HER2 labels, so the framework's embedded default is a
synthetic cohort that looks like breast ultrasound to radiomics algorithms and carries a class
signal planted where the source paper found it: in a thin peritumoral band (0-1 mm outside the
lesion boundary by default). It is written as real image and mask files plus a manifest CSV and
read later by the same loader as a user's data.

Physics-inspired, not a simulator: each case is a tissue echogenicity map (skin line,
subcutaneous fat lobules with Cooper's ligaments, heterogeneous fibroglandular tissue, pectoral
muscle) holding one hypoechoic irregular lesion (radial harmonics, optional spiculation,
posterior shadowing or enhancement from excess attenuation, occasional microcalcifications).
Fully developed speckle comes from circular complex Gaussian scatterers whose amplitude follows
the echogenicity map, convolved with an anisotropic Gaussian point-spread function (axial
narrower than lateral); the envelope is log-compressed to 0..255 over a fixed dynamic range (no
per-image normalisation, so a local change of echogenicity changes only local grey levels).

All geometry is in millimetres: pixel spacing may be anisotropic and lesion sizes, band widths
and the point-spread function keep their physical size.

The planted answer (``label`` 1 = HER2-low, 0 = HER2-zero):

* peritumoral band: in label-1 cases the backscatter of the band ``band_inner_mm < d <=
  band_outer_mm`` outside the true lesion boundary (``d`` = Euclidean distance in mm to the
  nearest lesion pixel, the ring a 1 mm dilation of the mask gives) is raised by ``e`` dB and its
  texture coarsened (clustered scatterers: the scatterer intensity is modulated by a log-normal
  field of mean 1 correlated over about one speckle cell) with weight ``band_texture * g`` (at
  most 1), where ``e = band_strength * g`` and ``g`` is a per-case Gamma factor of mean 1 and
  coefficient of variation ``effect_cv`` -- so the classes overlap.
* intratumoral: label-0 cases get ``intra_strength * g'`` dB more low-frequency internal
  heterogeneity (standard deviation of a smooth field of the lesion's echogenicity in dB), on
  top of a class-independent base heterogeneity; the mean lesion echogenicity does not depend on
  the class (as in the paper: HER2-zero tumours more heterogeneous).
* clinical: ER % drawn by class when ``er_signal`` (weak signal: univariable logistic OR about
  1.016 per %, paper 1.019; stratified within each class so every seed shows it); the other
  clinical columns follow the paper's Table 1 by class. Lesion size, posterior shadowing and
  calcification are image properties and drawn from the pooled distributions (no class signal).

Images are uint8 in 1..255 (0 is left for "outside the field of view"); masks are uint8 0/1 on
the same grid (origin 0, spacing as the spec); the lesion keeps at least 4 mm of tissue to every
image edge.

Everything else -- lesion size, shape, position, spiculation, shadowing, calcifications, the
tissue, the speckle, the gain -- is drawn by the same random process for both classes from
random streams that do not depend on the label, so flipping a case's label changes only pixels
within the band plus the point-spread function's reach (3 lateral SDs, 1.5 mm at defaults) and
inside the lesion.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from her2study.config import SyntheticSpec

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the generator's output changes: invalidates cached cohorts
PAPER_N, PAPER_N_POSITIVE = 209, 129  # 129 HER2-low (label 1) and 80 HER2-zero (label 0)
_PARTIAL = ".partial-"  # marker in the temporary sibling directory's name
_OLD = ".old-"  # marker of a replaced cohort's directory, removed after the swap
_REQUIRED_MARGIN_MM = 4.0  # tissue kept around the lesion (reader masks included) on every side

CLINICAL_COLUMNS = (
    "age",
    "height_cm",
    "weight_kg",
    "postmenopausal",
    "er_pct",
    "pr_pct",
    "ki67_pct",
    "node_positive",
    "size_long_mm",
    "size_short_mm",
    "left_side",
    "posterior_shadowing",
    "calcification",
)




# ----------------------------------------------------------------------------------------------
# seeds and labels


def n_positive_of(spec: SyntheticSpec) -> int:
    """Number of label-1 cases: ``spec.n_positive`` or the paper's proportion, rounded."""
    if spec.n_positive is not None:
        n_pos = int(spec.n_positive)
    else:
        n_pos = int(np.floor(spec.n_cases * PAPER_N_POSITIVE / PAPER_N + 0.5))
    if not 0 <= n_pos <= spec.n_cases:
        raise ValueError(f"n_positive={n_pos} must be within 0..n_cases={spec.n_cases}")
    return n_pos


def case_labels(spec: SyntheticSpec) -> np.ndarray:
    """Labels of all cases (int 0/1, exactly ``n_positive_of(spec)`` ones), without images."""
    labels = np.zeros(spec.n_cases, dtype=int)
    labels[: n_positive_of(spec)] = 1
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x4845_5232]))
    return labels[rng.permutation(spec.n_cases)]


def _er_stratum(spec: SyntheticSpec, index: int, label: int) -> tuple[int, int] | None:
    """(rank, class size) of case ``index`` among its class, or None for a counterfactual label.

    ER % is drawn by stratified sampling within each class (rank + uniform jitter over the class
    size, through the inverse CDF), so that a cohort's ER distribution, and with it the ER odds
    ratio, follows the design closely instead of swinging with the seed at n = 209.
    """
    labels = case_labels(spec)
    if int(labels[index]) != label:
        return None
    members = np.flatnonzero(labels == label)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x4552, label]))
    rank = np.empty(len(members), dtype=int)
    rank[rng.permutation(len(members))] = np.arange(len(members))
    return int(rank[np.searchsorted(members, index)]), len(members)


def case_rng(spec: SyntheticSpec, index: int) -> np.random.Generator:
    """Case ``index``'s own generator: ``SeedSequence(spec.seed).spawn(index + 1)[index]``."""
    return np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(index,)))


def case_id_of(index: int) -> str:
    return f"SYN{index + 1:04d}"


# ----------------------------------------------------------------------------------------------
# clinical covariates (paper Table 1, by class)

# piecewise-linear quantile functions through (min, Q1, median, Q3, max): medians/IQRs match
_QUANTILES = {
    "age": {0: (30, 45, 52, 62, 82), 1: (28, 43, 50, 60, 80)},
    "height_cm": {0: (146, 154, 158, 161, 170), 1: (147, 155, 158, 161, 170)},
    "weight_kg": {0: (43, 54, 58, 60, 78), 1: (44, 55, 57, 60, 78)},
    "pr_pct": {0: (0, 2, 80, 90, 95), 1: (0, 40, 80, 90, 95)},
    "ki67_pct": {0: (2, 10, 30, 40, 90), 1: (2, 10, 20, 30, 80)},
}
_ER_VALUES = np.array([0, 1, 5, 10, 30, 50, 60, 70, 80, 90, 95])
_ER_PROBS = {  # Table 1: class 0 median 90 (Q1 58, Q3 90), class 1 median 90 (Q1 80, Q3 90);
    # more ER-negative HER2-zero tumours give a univariable OR of about 1.016 per % (paper 1.019)
    0: np.array([0.22, 0.02, 0.00, 0.01, 0.00, 0.00, 0.04, 0.05, 0.12, 0.48, 0.06]),
    1: np.array([0.03, 0.00, 0.01, 0.01, 0.02, 0.04, 0.04, 0.06, 0.18, 0.54, 0.07]),
}
_PROPORTIONS = {"node_positive": {0: 0.24, 1: 0.30}, "left_side": {0: 0.48, 1: 0.53}}


def _quantile_draw(rng: np.random.Generator, knots: tuple) -> float:
    return float(np.interp(rng.random(), [0.0, 0.25, 0.5, 0.75, 1.0], knots))


def _round_pct(value: float) -> float:
    """Pathology-report style percentages: 0, 1, 2, 5, then multiples of 5."""
    if value < 0.5:
        return 0.0
    if value < 3.5:
        return float(round(value))
    return float(5 * round(value / 5))


def _draw_clinical(
    spec: SyntheticSpec, label: int, rng: np.random.Generator, er_stratum: tuple | None
) -> dict:
    age = round(_quantile_draw(rng, _QUANTILES["age"][label]))
    menopause_age = rng.normal(51.0, 3.0)
    er_probs = _ER_PROBS[label]
    if not spec.er_signal:
        w1 = PAPER_N_POSITIVE / PAPER_N
        er_probs = w1 * _ER_PROBS[1] + (1 - w1) * _ER_PROBS[0]
    u = rng.random()
    if er_stratum is not None:
        u = (er_stratum[0] + u) / er_stratum[1]
    cdf = np.cumsum(er_probs) / er_probs.sum()
    er = float(_ER_VALUES[min(int(np.searchsorted(cdf, u, side="right")), len(cdf) - 1)])
    pr = _round_pct(_quantile_draw(rng, _QUANTILES["pr_pct"][label]))
    if er < 1 and rng.random() < 0.9:  # ER-negative tumours are almost always PR-negative
        pr = 0.0
    return {
        "age": float(age),
        "height_cm": float(round(_quantile_draw(rng, _QUANTILES["height_cm"][label]))),
        "weight_kg": float(round(_quantile_draw(rng, _QUANTILES["weight_kg"][label]))),
        "postmenopausal": int(age > menopause_age),
        "er_pct": er,
        "pr_pct": pr,
        "ki67_pct": max(1.0, _round_pct(_quantile_draw(rng, _QUANTILES["ki67_pct"][label]))),
        "node_positive": int(rng.random() < _PROPORTIONS["node_positive"][label]),
        "left_side": int(rng.random() < _PROPORTIONS["left_side"][label]),
    }


# ----------------------------------------------------------------------------------------------
# lesion geometry (class-independent)


@dataclass
class _Geometry:
    cx: float  # lesion centre (mm, lateral)
    cy: float  # lesion centre (mm, depth)
    tilt: float  # rotation of the long axis from horizontal, radians
    a: float  # local semi-axis scale along the long axis, mm
    b: float  # ... along the short axis, mm
    harm_k: np.ndarray  # radial harmonic orders
    harm_c: np.ndarray  # ... amplitudes
    harm_p: np.ndarray  # ... phases
    size_long: float  # extent along the long axis, mm
    size_short: float  # extent along the short axis, mm
    spikes: list  # (angle, length_mm, half_width_mm, level_db)
    shadow_db_per_mm: float  # excess attenuation in the lesion (>0 shadow, <0 enhancement)
    shadowing: int
    calcs: list  # (x_mm, y_mm, amplitude_db)
    reader_perturb: list  # per reader: (k, coefficients, phases, bias), normalised to RMS 1


def _rho(t: np.ndarray, g: _Geometry | tuple) -> np.ndarray:
    k, c, p = (g.harm_k, g.harm_c, g.harm_p) if isinstance(g, _Geometry) else g
    return 1.0 + np.sum(c[:, None] * np.cos(k[:, None] * t[None, :] + p[:, None]), axis=0)


def _polar_radius(phi: np.ndarray, a: float, b: float, harm: tuple) -> np.ndarray:
    """Boundary radius (mm) at polar angle ``phi`` of the star-shaped outline, local frame.

    The outline is u = a rho(t) cos t, v = b rho(t) sin t; its polar angle is monotone in t.
    """
    t = np.arctan2(a * np.sin(phi), b * np.cos(phi))
    rho = _rho(t.ravel(), harm).reshape(t.shape)
    return rho * np.sqrt((a * np.cos(t)) ** 2 + (b * np.sin(t)) ** 2)


def _smooth_periodic(rng: np.random.Generator, kmax: int = 6) -> tuple:
    """Random smooth periodic function of angle (a bias plus harmonics), normalised to RMS 1."""
    k = np.arange(1, kmax + 1, dtype=float)
    coef = rng.normal(size=kmax) / k
    phase = rng.uniform(0, 2 * np.pi, size=kmax)
    bias = rng.normal() * 0.7
    t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    f = bias + np.sum(coef[:, None] * np.cos(k[:, None] * t + phase[:, None]), axis=0)
    scale = 1.0 / max(np.sqrt(np.mean(f**2)), 1e-9)
    return k, coef * scale, phase, bias * scale


def _eval_periodic(pert: tuple, phi: np.ndarray) -> np.ndarray:
    k, coef, phase, bias = pert
    out = np.full(phi.shape, bias, dtype=float)
    for kk, cc, pp in zip(k, coef, phase, strict=True):
        out += cc * np.cos(kk * phi + pp)
    return out


def _draw_geometry(spec: SyntheticSpec, rng: np.random.Generator) -> _Geometry:
    # sizes: lognormal long axis (median 18, IQR 13-25 mm), short/long ratio median 0.78
    size_long = float(np.clip(np.exp(rng.normal(np.log(18.0), 0.485)), 5.0, 60.0))
    ratio = float(np.clip(np.exp(rng.normal(np.log(0.78), 0.17)), 0.4, 0.97))
    size_short = size_long * ratio
    harm_k = np.arange(2, 18, dtype=float)  # lobulation (low orders), angular margins (high)
    n_h = len(harm_k)
    harm_c = spec.irregularity * rng.uniform(0.3, 1.0) * rng.normal(size=n_h) / (harm_k / 2) ** 1.4
    harm_p = rng.uniform(0, 2 * np.pi, size=n_h)
    harm = (harm_k, harm_c, harm_p)
    t = np.linspace(0, 2 * np.pi, 1440, endpoint=False)
    rho = _rho(t, harm)
    ext_u = np.ptp(rho * np.cos(t))
    ext_v = np.ptp(rho * np.sin(t))
    not_parallel = rng.random() < spec.not_parallel_prob
    tilt = rng.uniform(0.25, 1.1) if not_parallel else rng.uniform(-0.15, 0.15)
    tilt *= rng.choice([-1.0, 1.0])
    readers = [_smooth_periodic(rng), _smooth_periodic(rng)]
    t_check = np.linspace(-np.pi, np.pi, 720, endpoint=False)
    max_pert = max(
        amp * np.abs(_eval_periodic(pert, t_check)).max()
        for amp, pert in zip(
            (spec.reader1_perturb_mm, spec.reader2_perturb_mm), readers, strict=True
        )
    )
    margin = _REQUIRED_MARGIN_MM + max_pert + 0.3
    top_min = max(margin, 5.0)
    avail_w = spec.fov_width_mm - 2 * margin
    avail_h = spec.fov_depth_mm - margin - top_min

    def bbox(scale: float, tilt_: float):
        a = scale * size_long / ext_u  # so that the extent along the long axis is size_long
        b = scale * size_short / ext_v
        u, v = a * rho * np.cos(t), b * rho * np.sin(t)
        x = u * np.cos(tilt_) - v * np.sin(tilt_)
        y = u * np.sin(tilt_) + v * np.cos(tilt_)
        return a, b, x, y

    scale = 1.0
    for _ in range(200):  # fit: first lay the lesion flatter, then shrink it
        a, b, x, y = bbox(scale, tilt)
        if np.ptp(x) <= avail_w and np.ptp(y) <= avail_h:
            break
        if abs(tilt) > 0.02:
            tilt *= 0.85
        else:
            tilt = 0.0
            scale *= 0.98
    size_long *= scale
    size_short *= scale
    cx = spec.fov_width_mm / 2 + rng.normal(0, 3.0)
    cx = float(np.clip(cx, margin - x.min(), spec.fov_width_mm - margin - x.max()))
    lo, hi = top_min - y.min(), spec.fov_depth_mm - margin - y.max()
    cy = float(lo + (hi - lo) * rng.beta(1.6, 2.2)) if hi > lo else float(lo)

    spikes = []
    if rng.random() < spec.spiculation_prob:
        for _ in range(rng.integers(6, 16)):
            level = -spec.lesion_contrast_db * rng.uniform(0.6, 1.0)
            if rng.random() < 0.35:
                level = rng.uniform(2.0, 5.0)  # echogenic spike
            spikes.append(
                (rng.uniform(-np.pi, np.pi), rng.uniform(1.5, 4.5), rng.uniform(0.2, 0.45), level)
            )
    shadowing = int(rng.random() < spec.shadowing_prob)
    enhance = rng.random() < spec.enhancement_prob
    if shadowing:
        shadow = rng.uniform(0.35, 0.9)  # dB per mm of lesion path, one way
    elif enhance:
        shadow = -rng.uniform(0.1, 0.25)
    else:
        shadow = rng.uniform(-0.03, 0.06)
    calcs = []
    if rng.random() < spec.calcification_prob:
        for _ in range(rng.integers(1, 7)):
            rr, ang = np.sqrt(rng.uniform(0.0, 0.6)), rng.uniform(-np.pi, np.pi)
            calcs.append((rr, ang, rng.uniform(3.0, 10.0)))
    return _Geometry(
        cx=cx,
        cy=cy,
        tilt=float(tilt),
        a=float(a),
        b=float(b),
        harm_k=harm_k,
        harm_c=harm_c,
        harm_p=harm_p,
        size_long=float(size_long),
        size_short=float(size_short),
        spikes=spikes,
        shadow_db_per_mm=float(shadow),
        shadowing=shadowing,
        calcs=calcs,
        reader_perturb=readers,
    )


# ----------------------------------------------------------------------------------------------
# rendering


def _smooth_noise(
    rng: np.random.Generator, shape: tuple, sigma_mm: tuple, spacing: tuple
) -> np.ndarray:
    """Zero-mean, unit-SD Gaussian random field with correlation lengths ``sigma_mm`` (y, x)."""
    field = rng.standard_normal(shape)
    sig = (sigma_mm[0] / spacing[0], sigma_mm[1] / spacing[1])
    field = ndimage.gaussian_filter(field, sig, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-12)


def _gauss_l2(sigma_px: float) -> float:
    """L2 norm of the discrete 1D Gaussian kernel scipy applies (truncate=3)."""
    delta = np.zeros(int(8 * sigma_px) + 9)
    delta[len(delta) // 2] = 1.0
    return float(np.sqrt(np.sum(ndimage.gaussian_filter1d(delta, sigma_px, truncate=3.0) ** 2)))


def _layers(spec, rng, yy, xx, spacing, geom: _Geometry) -> np.ndarray:
    """Echogenicity of the tissue (dB re glandular tissue) without the lesion."""
    shape = yy.shape
    w = spec.fov_width_mm
    phase = rng.uniform(0, 2 * np.pi, size=3)
    xs = xx / w * 2 * np.pi
    skin = 1.6 + rng.uniform(-0.2, 0.3) + 0.1 * np.sin(xs + phase[0])
    fat_bottom = (
        skin
        + rng.uniform(3.0, 7.0)
        + rng.uniform(0.5, 2.0) * np.sin(rng.uniform(0.6, 1.6) * xs + phase[1])
        + 0.8 * np.sin(2.7 * xs + phase[2])
    )
    lesion_bottom = geom.cy + 0.5 * geom.size_long
    muscle_top = max(spec.fov_depth_mm - rng.uniform(4.0, 8.0), lesion_bottom + 3.0)
    muscle_top = muscle_top + 0.6 * np.sin(xs * rng.uniform(0.5, 1.2) + phase[0])

    db = np.zeros(shape)
    # fibroglandular tissue: bright, heterogeneous, elongated along the skin, with fat islands
    gland = _smooth_noise(rng, shape, (0.5, 1.6), spacing)
    islands = _smooth_noise(rng, shape, (0.9, 2.2), spacing)
    fine = _smooth_noise(rng, shape, (0.25, 0.6), spacing)
    db += 2.5 * gland + 1.0 * fine
    island_w = 1.0 / (1.0 + np.exp(-(islands - 1.1) / 0.12))
    db = db * (1 - island_w) + (-18.0 + 1.5 * fine) * island_w
    # subcutaneous fat lobules separated by thin echogenic septa (Cooper's ligaments)
    lob = _smooth_noise(rng, shape, (1.0, 2.4), spacing)
    septa = np.exp(-((lob / 0.12) ** 2))
    fat = -18.0 + 1.5 * gland + 16.0 * septa
    fat_w = 1.0 / (1.0 + np.exp(-(fat_bottom - yy) / 0.25))
    db = db * (1 - fat_w) + fat * fat_w
    # skin: dark coupling gel, bright entry line, dermis, deep skin line
    dermis = (yy < skin).astype(float)
    db = db * (1 - dermis) + (1.0 + 1.5 * fine) * dermis
    db += 12.0 * np.exp(-(((yy - 0.45) / 0.15) ** 2)) + 6.0 * np.exp(-(((yy - skin) / 0.15) ** 2))
    db = np.where(yy < 0.25, -20.0, db)
    # retromammary fat, pectoral fascia and striated muscle
    rmf = (yy > muscle_top - 1.2) & (yy <= muscle_top)
    db = np.where(rmf, -18.0 + 1.5 * fine, db)
    slope = rng.uniform(-0.25, 0.25)
    stri = np.cos(2 * np.pi * (yy + slope * xx) / rng.uniform(0.9, 1.4) + phase[1])
    muscle = -9.0 + 4.0 * np.clip(stri, 0, None) ** 4 + 1.5 * fine
    db = np.where(yy > muscle_top, muscle, db)
    db += 9.0 * np.exp(-(((yy - muscle_top) / 0.15) ** 2))  # fascia
    return db


def _lesion_polar(geom: _Geometry, yy: np.ndarray, xx: np.ndarray):
    dx, dy = xx - geom.cx, yy - geom.cy
    c, s = np.cos(geom.tilt), np.sin(geom.tilt)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    r = np.hypot(u, v)
    phi = np.arctan2(v, u)
    return r, phi, _polar_radius(phi, *_outline(geom))


def _outline(geom: _Geometry) -> tuple:
    return geom.a, geom.b, (geom.harm_k, geom.harm_c, geom.harm_p)


def _local_to_image(geom: _Geometry, radius: float, angle: float) -> tuple[float, float]:
    """Image (x, y) in mm of the point at ``radius`` mm, polar ``angle`` in the lesion frame."""
    u, v = radius * np.cos(angle), radius * np.sin(angle)
    c, s = np.cos(geom.tilt), np.sin(geom.tilt)
    return float(geom.cx + u * c - v * s), float(geom.cy + u * s + v * c)


def _streams(rng: np.random.Generator) -> list[np.random.Generator]:
    """Independent streams: geometry, tissue, speckle, signal, clinical, spare.

    What is drawn from each never depends on the label, so the label changes only the planted
    signal (and the clinical columns, drawn last from their own stream).
    """
    return [np.random.default_rng(s) for s in rng.integers(0, 2**63, size=(6, 2))]


def synthesize_case(
    spec: SyntheticSpec,
    index: int,
    rng: np.random.Generator | None = None,
    label: int | None = None,
) -> dict[str, Any]:
    """Synthesize case ``index``: arrays, clinical row and the planted truth.

    ``rng`` defaults to ``case_rng(spec, index)``; ``label`` defaults to
    ``case_labels(spec)[index]`` (give it to render the counterfactual of a case).

    Returns a dict with ``case_id``, ``label``, ``image`` (uint8, rows = depth), ``mask`` and
    ``mask_reader2`` (uint8 0/1, same shape), ``lesion`` (the true lesion, uint8 0/1),
    ``spacing`` ((x, y) mm), ``clinical`` (the manifest's clinical columns) and ``truth``
    (the per-case planted effects: ``band_db``, ``band_texture``, ``intra_db``, ...).
    """
    if rng is None:
        rng = case_rng(spec, index)
    if label is None:
        label = int(case_labels(spec)[index])
    label = int(label)
    geo_rng, tissue_rng, speckle_rng, signal_rng, clin_rng, _spare = _streams(rng)

    geom = _draw_geometry(spec, geo_rng)
    clinical = _draw_clinical(spec, label, clin_rng, _er_stratum(spec, index, label))
    clinical.update(
        size_long_mm=round(geom.size_long, 1),
        size_short_mm=round(geom.size_short, 1),
        posterior_shadowing=geom.shadowing,
        calcification=int(bool(geom.calcs)),
    )

    sx, sy = float(spec.spacing_x_mm), float(spec.spacing_y_mm)
    ny = int(round(spec.fov_depth_mm / sy))
    nx = int(round(spec.fov_width_mm / sx))
    shape = (ny, nx)
    spacing = (sy, sx)
    yy, xx = np.meshgrid(np.arange(ny) * sy, np.arange(nx) * sx, indexing="ij")

    # --- lesion, reader masks, distance map
    r, phi, big_r = _lesion_polar(geom, yy, xx)
    lesion = r < big_r
    masks = []
    amps = (spec.reader1_perturb_mm, spec.reader2_perturb_mm)
    for amp, pert in zip(amps, geom.reader_perturb, strict=True):
        masks.append((r < big_r + amp * _eval_periodic(pert, phi)).astype(np.uint8))
    d_out = ndimage.distance_transform_edt(~lesion, sampling=spacing)

    # --- tissue echogenicity (dB), class-independent
    db = _layers(spec, tissue_rng, yy, xx, spacing, geom)
    for ang, length, half_w, level in geom.spikes:  # spiculation, outside the lesion mask
        excess = r - _polar_radius(np.array(ang), *_outline(geom))
        dphi = np.angle(np.exp(1j * (phi - ang)))
        width = half_w * np.clip(1 - excess / length, 0, 1)
        spike = (excess > -0.5) & (np.abs(dphi) * r < width) & ~lesion
        db = np.where(spike, level, db)
    heter = _smooth_noise(signal_rng, shape, (0.9, 1.2), spacing)
    lesion_db = -spec.lesion_contrast_db + tissue_rng.normal(0, 2.5)
    base_h = spec.lesion_heterogeneity_db * tissue_rng.uniform(0.5, 1.5)
    margin_w = tissue_rng.uniform(0.2, 0.9)  # indistinct (wide) to sharp (narrow) margin, mm

    # --- class signal factors: always drawn, applied by label
    k_shape = 1.0 / max(spec.effect_cv, 1e-6) ** 2
    g_band = float(signal_rng.gamma(k_shape, 1.0 / k_shape))
    g_intra = float(signal_rng.gamma(k_shape, 1.0 / k_shape))
    # coarse texture: clustered scatterers, a log-normal intensity modulation of mean 1 that is
    # correlated over about one speckle cell (so it survives the point-spread function)
    coarse = np.exp(_smooth_noise(signal_rng, shape, (0.3, 0.3), spacing) - 0.5)
    band_db = spec.band_strength * g_band if label == 1 else 0.0
    texture = (
        min(1.0, spec.band_texture * g_band) if (label == 1 and spec.band_strength > 0) else 0.0
    )
    intra_db = spec.intra_strength * g_intra if label == 0 else 0.0
    h = base_h + intra_db

    inside = lesion.astype(float)
    # margin: echogenicity ramps from the tissue's to the lesion's over margin_w mm inside
    d_in = ndimage.distance_transform_edt(lesion, sampling=spacing)
    ramp = np.clip(d_in / margin_w, 0.0, 1.0) * inside
    db = db * (1 - ramp) + (lesion_db + h * heter) * ramp
    band = (d_out > spec.band_inner_mm) & (d_out <= spec.band_outer_mm) & ~lesion
    db = db + band_db * band
    db += tissue_rng.normal(0, spec.gain_jitter_db)
    db -= 0.05 * yy  # residual depth attenuation after time-gain compensation

    # --- posterior shadowing / enhancement: excess attenuation along the lesion path
    path = ndimage.gaussian_filter1d(inside, 1.0 / sx, axis=1)
    path_mm = np.cumsum(path, axis=0) * sy
    db = db - 2 * geom.shadow_db_per_mm * path_mm * (1 - 0.5 * inside)  # round trip
    amplitude = 10.0 ** (db / 20.0)

    # --- speckle: complex Gaussian scatterers, band texture, calcifications, PSF, envelope
    scat = speckle_rng.standard_normal((2,) + shape)
    mod = np.where(band, 1.0 + texture * (coarse - 1.0), 1.0)
    field = (scat[0] + 1j * scat[1]) * (amplitude * np.sqrt(mod / 2.0))
    for rr, ang, level in geom.calcs:
        px, py = _local_to_image(geom, rr * _polar_radius(np.array(ang), *_outline(geom)), ang)
        i, j = int(round(py / sy)), int(round(px / sx))
        if 0 <= i < ny and 0 <= j < nx:
            field[i, j] += 10 ** (level / 20.0) * np.exp(1j * speckle_rng.uniform(0, 2 * np.pi))
    sig_px = (spec.psf_axial_mm / sy, spec.psf_lateral_mm / sx)
    norm = _gauss_l2(sig_px[0]) * _gauss_l2(sig_px[1])
    re = ndimage.gaussian_filter(field.real, sig_px, truncate=3.0) / norm
    im = ndimage.gaussian_filter(field.imag, sig_px, truncate=3.0) / norm
    noise_amp = 10 ** (spec.noise_floor_db / 20) / np.sqrt(2)
    noise = speckle_rng.standard_normal((2,) + shape) * noise_amp
    env = np.hypot(re + noise[0], im + noise[1])
    top_db = 17.0  # display: glandular tissue (mean -2.5 dB in log domain) near grey 155
    gray = 255.0 * (20 * np.log10(env + 1e-12) - (top_db - spec.dynamic_range_db))
    gray /= spec.dynamic_range_db
    image = np.clip(np.round(gray), 1, 255).astype(np.uint8)  # 0 is kept for "outside the FOV"

    truth = {
        "band_db": float(band_db),
        "band_texture": float(texture),
        "band_factor": g_band,
        "intra_db": float(intra_db),
        "intra_factor": g_intra,
        "intra_heterogeneity_db": float(h),
        "spiculated": int(bool(geom.spikes)),
        "tilt_deg": float(np.degrees(geom.tilt)),
    }
    return {
        "case_id": case_id_of(index),
        "index": index,
        "label": label,
        "image": image,
        "mask": masks[0],
        "mask_reader2": masks[1],
        "lesion": lesion.astype(np.uint8),
        "spacing": (sx, sy),
        "clinical": clinical,
        "truth": truth,
    }


def clinical_table(spec: SyntheticSpec) -> pd.DataFrame:
    """The manifest's label and clinical columns for every case, without rendering images."""
    labels = case_labels(spec)
    rows = []
    for i in range(spec.n_cases):
        streams = _streams(case_rng(spec, i))
        geom = _draw_geometry(spec, streams[0])
        row = {"case_id": case_id_of(i), "label": int(labels[i])}
        row.update(
            _draw_clinical(spec, int(labels[i]), streams[4], _er_stratum(spec, i, labels[i]))
        )
        row.update(
            size_long_mm=round(geom.size_long, 1),
            size_short_mm=round(geom.size_short, 1),
            posterior_shadowing=geom.shadowing,
            calcification=int(bool(geom.calcs)),
        )
        rows.append(row)
    return pd.DataFrame(rows)[["case_id", "label", *CLINICAL_COLUMNS]]


# ----------------------------------------------------------------------------------------------
# writing


def _spec_record(spec: SyntheticSpec) -> dict:
    return {"generator_version": GENERATOR_VERSION, "spec": dataclasses.asdict(spec)}


def _validate(spec: SyntheticSpec) -> None:
    if spec.image_format not in ("nifti", "png"):
        raise ValueError(f"image_format must be 'nifti' or 'png', not {spec.image_format!r}")
    if spec.n_cases < 1:
        raise ValueError("n_cases must be at least 1")
    if spec.spacing_x_mm <= 0 or spec.spacing_y_mm <= 0:
        raise ValueError("pixel spacings must be positive")
    if not 0 <= spec.band_inner_mm < spec.band_outer_mm:
        raise ValueError("need 0 <= band_inner_mm < band_outer_mm")
    if spec.band_outer_mm > _REQUIRED_MARGIN_MM - 0.5:
        raise ValueError(f"band_outer_mm must be at most {_REQUIRED_MARGIN_MM - 0.5} mm")
    n_positive_of(spec)


def _is_complete(out_dir: Path, record: dict) -> bool:
    manifest, spec_file = out_dir / "manifest.csv", out_dir / "spec.json"
    if not (manifest.is_file() and spec_file.is_file()):
        return False
    try:
        if json.loads(spec_file.read_text()) != json.loads(json.dumps(record)):
            return False
        df = pd.read_csv(manifest)
    except (OSError, ValueError):
        return False
    cols = [c for c in ("image", "mask", "mask_reader2") if c in df.columns]
    return len(cols) == 3 and all((out_dir / p).is_file() for c in cols for p in df[c])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_partials(out_dir: Path) -> None:
    """Remove temporary siblings left by killed runs (their process is gone)."""
    for marker in (_PARTIAL, _OLD):
        prefix = f".{out_dir.name}{marker}"
        for p in out_dir.parent.glob(f"{prefix}*"):
            try:
                pid = int(p.name[len(prefix) :].split("-")[0])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                log.info("removing stale temporary synthetic cohort %s", p)
                shutil.rmtree(p, ignore_errors=True)


def _write_case(spec: SyntheticSpec, index: int, label: int, root: str) -> dict:
    case = synthesize_case(spec, index, case_rng(spec, index), label=label)
    ext = ".nii.gz" if spec.image_format == "nifti" else ".png"
    row: dict[str, Any] = {"case_id": case["case_id"]}
    for key, sub in (("image", "images"), ("mask", "masks"), ("mask_reader2", "masks_reader2")):
        rel = f"{sub}/{case['case_id']}{ext}"
        img = sitk.GetImageFromArray(case[key])
        img.SetSpacing((spec.spacing_x_mm, spec.spacing_y_mm))
        img.SetOrigin((0.0, 0.0))
        sitk.WriteImage(img, str(Path(root) / rel), useCompression=True)
        row[key] = rel
    row["label"] = case["label"]
    if spec.image_format == "png":
        row["spacing_x_mm"] = spec.spacing_x_mm
        row["spacing_y_mm"] = spec.spacing_y_mm
    row.update(case["clinical"])
    return row


def write_synthetic_cohort(spec: SyntheticSpec, out_dir: str | Path, n_jobs: int = 1) -> Path:
    """Write images/, masks/, masks_reader2/ and manifest.csv under out_dir; return the manifest.

    The cohort is built in a temporary sibling directory and moved into place at the end, so an
    interrupted run never leaves a half cohort that looks complete. If ``out_dir`` already holds
    the complete cohort of the same spec (``spec.json`` beside the manifest), it is returned
    untouched. An existing ``out_dir`` holding anything else than a synthetic cohort is refused.
    Results do not depend on ``n_jobs`` (each case has its own seed).
    """
    _validate(spec)
    out_dir = Path(out_dir).resolve()
    record = _spec_record(spec)
    if _is_complete(out_dir, record):
        return out_dir / "manifest.csv"
    if out_dir.exists():
        ours = {"images", "masks", "masks_reader2", "manifest.csv", "spec.json"}
        foreign = [p.name for p in out_dir.iterdir() if p.name not in ours]
        if not out_dir.is_dir() or foreign:
            raise FileExistsError(
                f"{out_dir} exists and holds other files ({foreign[:5]}); "
                "choose an empty or new directory for the synthetic cohort"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_partials(out_dir)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}{_PARTIAL}{os.getpid()}-", dir=out_dir.parent)
    )
    try:
        for sub in ("images", "masks", "masks_reader2"):
            (tmp / sub).mkdir()
        labels = case_labels(spec)
        args = [(spec, i, int(labels[i]), str(tmp)) for i in range(spec.n_cases)]
        if n_jobs == 1:
            rows = [_write_case(*a) for a in args]
        else:
            from joblib import Parallel, delayed

            rows = Parallel(n_jobs=n_jobs)(delayed(_write_case)(*a) for a in args)
        df = pd.DataFrame(rows)
        front = ["case_id", "image", "mask", "mask_reader2", "label"]
        if spec.image_format == "png":
            front += ["spacing_x_mm", "spacing_y_mm"]
        df = df[front + list(CLINICAL_COLUMNS)]
        df.to_csv(tmp / "manifest.csv", index=False)
        (tmp / "spec.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        if _is_complete(out_dir, record):  # a concurrent run finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return out_dir / "manifest.csv"
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}{_OLD}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote synthetic cohort of %d cases to %s", spec.n_cases, out_dir)
    return out_dir / "manifest.csv"
