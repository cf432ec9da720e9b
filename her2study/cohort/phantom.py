"""What each synthetic case draws: lesion geometry, the tissue, the noise fields of the image,
and the clinical covariates (the paper's Table 1, by class).

The image-physics half of :mod:`her2study.cohort.synthetic` (which assembles a case from these
draws, labels the cohort and writes it); each function takes the case's own random stream, so
what it draws never depends on another case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from her2study.config import SyntheticSpec

PAPER_N, PAPER_N_POSITIVE = 209, 129  # 129 HER2-low (label 1) and 80 HER2-zero (label 0)
_REQUIRED_MARGIN_MM = 4.0  # tissue kept around the lesion (reader masks included) on every side


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


# ----------------------------------------------------------------------------------------------
# devices (acquisition only: the class signal is the same on every device)

# Built-in device profiles: point-spread-function scale (speckle size), overall gain (dB) and an
# extra image-domain blur (mm, e.g. spatial compounding / persistence) per device, at
# ``device_strength = 1``; the strength scales each profile's departure from device A.
DEVICE_PROFILES = (
    ("A", 1.00, 0.0, 0.00),
    ("B", 1.60, 5.0, 0.20),
    ("C", 0.70, -5.0, 0.35),
    ("D", 1.30, 2.5, 0.10),
)


@dataclass(frozen=True)
class Device:
    """One synthetic scanner: what it changes in the image (never the lesion or the label)."""

    name: str
    psf_scale: float  # multiplies both PSF SDs: larger speckle cells
    gain_db: float  # added to the echogenicity before log compression
    blur_mm: float  # SD of an extra Gaussian blur of the envelope, mm (0 = none)


def device_profiles(spec: SyntheticSpec) -> list[Device]:
    """The cohort's devices (empty when ``spec.devices`` is 0: the default, no device effects)."""
    n = int(spec.devices)
    if n <= 0:
        return []
    if n > len(DEVICE_PROFILES):
        raise ValueError(f"devices must be at most {len(DEVICE_PROFILES)}, got {n}")
    s = float(spec.device_strength)
    return [
        Device(name, 1.0 + s * (psf - 1.0), s * gain, s * blur)
        for name, psf, gain, blur in DEVICE_PROFILES[:n]
    ]


def device_assignment(spec: SyntheticSpec, labels: np.ndarray) -> np.ndarray:
    """Device index of every case: balanced within each class, seeded, independent of the case
    streams (so turning devices on changes no other draw of a case).

    ``device_label_shift`` (0..1) makes device and label associated: that share of the label-1
    cases is moved to the first device and of the label-0 cases to the last (a confounded
    cohort); 0 keeps prevalence equal on every device.
    """
    n_dev = int(spec.devices)
    out = np.zeros(len(labels), dtype=int)
    if n_dev <= 0:
        return out
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x4445_5643]))
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        out[members] = np.arange(len(members)) % n_dev
        n_move = int(round(float(spec.device_label_shift) * len(members)))
        out[members[:n_move]] = 0 if label == 1 else n_dev - 1
    return out


# ----------------------------------------------------------------------------------------------
# the band phantom (data=band_phantom): the class signal away from the lesion

BAND_PHANTOM = {  # the band phantom's spec values (conf/data/band_phantom.yaml says the same)
    "band_inner_mm": 1.5,
    "band_outer_mm": 2.5,
    # twice the default's 3 dB: the band lies in tissue 1.5 mm further out, whose own
    # heterogeneity is larger than the lesion margin's, and the phantom should give a clear
    # answer at 100-200 cases (at 3 dB and 120 cases the nested per-region intervals overlap)
    "band_strength": 6.0,
    "intra_strength": 0.0,
    "er_signal": False,
}


def band_phantom_spec(**overrides) -> SyntheticSpec:
    """The band phantom: class signal only in the band ``1.5 < d <= 2.5`` mm outside the lesion
    (:data:`BAND_PHANTOM`), none inside the lesion nor in the clinical ER column; ``overrides``
    set any other field (``n_cases``, ``band_strength``, the band itself, ...)."""
    from her2study.config import SyntheticSpec

    return SyntheticSpec(**{**BAND_PHANTOM, **overrides})
