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

A second mode, the **band phantom** (:func:`her2study.cohort.phantom.band_phantom_spec`,
``data=band_phantom``), moves the class signal to a band away from the paper's 0-1 mm (1.5-2.5
mm outside the lesion, 6 dB instead of 3) and switches the other signals off
(``intra_strength=0``: intratumoral texture carries no class signal; ``er_signal=false``): a
cohort whose right margin answer is "a region reaching the band", to test that a margin
comparison finds it. It is the same generator with other spec values, so the default cohort is
untouched.

A third, the **contour phantom** (``data=contour_phantom``, :mod:`her2study.cohort.contour`), adds
a planted contour-sensitive rim on the drawn contour (off by default: the cohort as before).

What each case draws (lesion geometry, tissue, noise fields, clinical covariates) is in
:mod:`her2study.cohort.phantom`; this module labels the cohort, assembles and writes the cases.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from her2study.cohort.contour import RIM_FIELDS, add_contour_rim, rim_level_db, rim_on
from her2study.cohort.phantom import (
    _REQUIRED_MARGIN_MM,
    PAPER_N,
    PAPER_N_POSITIVE,
    _draw_clinical,
    _draw_geometry,
    _eval_periodic,
    _gauss_l2,
    _layers,
    _lesion_polar,
    _local_to_image,
    _outline,
    _polar_radius,
    _smooth_noise,
    _streams,
    device_assignment,
    device_profiles,
)
from her2study.config import SyntheticSpec
from her2study.folders import remove_stale_siblings, replace_dir

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the generator's output changes: invalidates cached cohorts
_PARTIAL = ".partial-"  # marker in the temporary sibling directory's name
_OLD = ".old-"  # marker of a replaced cohort's directory, removed after the swap

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


def case_device(spec: SyntheticSpec, index: int):
    """Case ``index``'s :class:`~her2study.cohort.phantom.Device`, or None without devices."""
    devices = device_profiles(spec)
    if not devices:
        return None
    return devices[int(device_assignment(spec, case_labels(spec))[index])]


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
    device = case_device(spec, index)  # acquisition only: None (the default) changes nothing

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
    if device is not None:
        db += device.gain_db
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
    psf_mm = (spec.psf_axial_mm, spec.psf_lateral_mm)
    if device is not None:
        psf_mm = (psf_mm[0] * device.psf_scale, psf_mm[1] * device.psf_scale)
    sig_px = (psf_mm[0] / sy, psf_mm[1] / sx)
    norm = _gauss_l2(sig_px[0]) * _gauss_l2(sig_px[1])
    re = ndimage.gaussian_filter(field.real, sig_px, truncate=3.0) / norm
    im = ndimage.gaussian_filter(field.imag, sig_px, truncate=3.0) / norm
    noise_amp = 10 ** (spec.noise_floor_db / 20) / np.sqrt(2)
    noise = speckle_rng.standard_normal((2,) + shape) * noise_amp
    env = np.hypot(re + noise[0], im + noise[1])
    if device is not None and device.blur_mm > 0:
        env = ndimage.gaussian_filter(env, (device.blur_mm / sy, device.blur_mm / sx))
    top_db = 17.0  # display: glandular tissue (mean -2.5 dB in log domain) near grey 155
    gray = 255.0 * (20 * np.log10(env + 1e-12) - (top_db - spec.dynamic_range_db))
    gray /= spec.dynamic_range_db
    rim_db = rim_level_db(spec, label, _spare)  # a planted rim on the drawn contour (default off)
    gray = add_contour_rim(gray, masks[0], spacing, rim_db, spec)
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
    if device is not None:
        truth["device"] = device.name
    if rim_on(spec):
        truth["rim_db"] = rim_db
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
        **({"device": device.name} if device is not None else {}),
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
    return pd.DataFrame(rows)[["case_id", "label", *CLINICAL_COLUMNS]].pipe(_with_devices, spec)


def _with_devices(df: pd.DataFrame, spec: SyntheticSpec) -> pd.DataFrame:
    """The manifest's ``device`` column (after ``label``) when the spec has devices."""
    devices = device_profiles(spec)
    if not devices:
        return df
    names = [devices[k].name for k in device_assignment(spec, case_labels(spec))]
    by_id = dict(zip(map(case_id_of, range(spec.n_cases)), names, strict=True))
    df = df.copy()
    df.insert(df.columns.get_loc("label") + 1, "device", df["case_id"].map(by_id))
    return df


# ----------------------------------------------------------------------------------------------
# writing


def spec_fields(spec: SyntheticSpec) -> dict:
    """The spec as a dict, without the device (rim) fields when devices (the rim) are off: the
    record (and so the cached cohort's folder and ``spec.json``) of a spec without them stays
    what it was before they existed."""
    record = dataclasses.asdict(spec)
    if not spec.devices:
        record = {k: v for k, v in record.items() if not k.startswith("device")}
    return record if rim_on(spec) else {k: v for k, v in record.items() if k not in RIM_FIELDS}


def _spec_record(spec: SyntheticSpec) -> dict:
    return {"generator_version": GENERATOR_VERSION, "spec": spec_fields(spec)}


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
    device_profiles(spec)  # at most as many devices as profiles
    if not 0 <= spec.device_label_shift <= 1:
        raise ValueError("device_label_shift must be within 0..1")
    if rim_on(spec) and not spec.rim_width_mm > 0:
        raise ValueError("rim_width_mm must be positive")


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
    remove_stale_siblings(out_dir, (_PARTIAL, _OLD))
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
        df = df[front + list(CLINICAL_COLUMNS)].pipe(_with_devices, spec)
        df.to_csv(tmp / "manifest.csv", index=False)
        (tmp / "spec.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        if _is_complete(out_dir, record):  # a concurrent run finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return out_dir / "manifest.csv"
        replace_dir(tmp, out_dir, _OLD)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote synthetic cohort of %d cases to %s", spec.n_cases, out_dir)
    return out_dir / "manifest.csv"
