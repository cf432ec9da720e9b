"""Tumour, peritumoral rings and concentric bands, in millimetres from the mask boundary.

One signed distance map in physical units per case serves every width: a ring of width ``w`` mm is
the set of pixels outside the mask whose centre lies at ``0 < d <= w`` mm from the nearest mask
pixel centre; a band ``a-b`` mm is ``a < d <= b``. Rings are clipped to the image and to the
ultrasound field of view, and the fraction of the full (unclipped) annulus that survives is
recorded as its coverage. Distances exactly on a ring's edge are decided with a tolerance of
``BOUNDARY_TOL_MM`` so that the same width gives the same mask however it was computed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from her2study.errors import ConfigError

# Ring membership ``inner < d <= outer`` is decided with this tolerance (mm), far below any pixel
# spacing: ITK's float32 distances and a spacing read as 0.2 (manifest) or 0.2000000030 (NIfTI
# header) then give the same ring for a pixel centre exactly ``w`` mm away, whatever other widths
# are built from the same map. Bump REGION_VERSION when the rule changes (it keys the cache).
BOUNDARY_TOL_MM = 1e-5
REGION_VERSION = 2


@dataclass(frozen=True)
class RegionSpec:
    """A region around a lesion; ``inner_mm``/``outer_mm`` are None for the tumour itself."""

    name: str
    inner_mm: float | None = None
    outer_mm: float | None = None

    @property
    def is_intra(self) -> bool:
        return self.outer_mm is None

    def as_dict(self) -> dict:
        return asdict(self)


def _mm(value: float) -> str:
    """1.0 -> '1', 0.5 -> '0p5' (a name-safe number)."""
    text = f"{float(value):g}"
    return text.replace(".", "p").replace("-", "m")


def intra_spec() -> RegionSpec:
    return RegionSpec("intra")


def ring_spec(width_mm: float) -> RegionSpec:
    if width_mm <= 0:
        raise ConfigError(f"ring width must be > 0 mm, got {width_mm}")
    return RegionSpec(f"peri{_mm(width_mm)}mm", 0.0, float(width_mm))


def ring_label(width_mm: float) -> str:
    """The name of the tumour + ``width_mm`` ring signature: ``IntraPeri 1 mm``."""
    return f"IntraPeri {float(width_mm):g} mm"


def band_spec(inner_mm: float, outer_mm: float) -> RegionSpec:
    if not 0 <= inner_mm < outer_mm:
        raise ConfigError(f"band needs 0 <= inner < outer mm, got {inner_mm}-{outer_mm}")
    if inner_mm == 0:
        return ring_spec(outer_mm)
    return RegionSpec(f"band{_mm(inner_mm)}to{_mm(outer_mm)}mm", float(inner_mm), float(outer_mm))


def region_specs(
    include_intra: bool = True,
    ring_widths_mm: list[float] | tuple[float, ...] = (),
    bands_mm: list[list[float]] | tuple = (),
) -> list[RegionSpec]:
    """The regions a config asks for, tumour first, without duplicates."""
    specs = [intra_spec()] if include_intra else []
    specs += [ring_spec(float(w)) for w in ring_widths_mm]
    specs += [band_spec(float(a), float(b)) for a, b in bands_mm]
    seen, out = set(), []
    for spec in specs:
        if spec.name not in seen:
            seen.add(spec.name)
            out.append(spec)
    if not out:
        raise ConfigError("no region selected: enable region.include_intra or give ring widths")
    return out


@dataclass
class RegionStats:
    """Size of one region of one case, and how much of it survived clipping."""

    n_pixels: int
    area_mm2: float
    coverage: float  # clipped area / full annulus area (1.0 for the tumour)


def field_of_view(image: sitk.Image, mode: str = "nonzero") -> np.ndarray:
    """Boolean field-of-view mask: the non-zero part of the image, holes filled."""
    arr = sitk.GetArrayViewFromImage(image)
    if mode == "none":
        return np.ones(arr.shape, dtype=bool)
    if mode != "nonzero":
        raise ConfigError(f"unknown region.fov {mode!r}: use nonzero or none")
    fov = ndimage.binary_closing(arr > 0, iterations=2, border_value=1)
    return ndimage.binary_fill_holes(fov)


class RegionMaker:
    """Build every region of one case from a single padded signed distance map.

    Parameters
    ----------
    mask : binary lesion mask (uint8), with the image's spacing.
    fov : boolean field of view on the image grid, or None for the whole image.
    max_outer_mm : the largest ring/band outer distance that will be asked for.
    """

    def __init__(self, mask: sitk.Image, fov: np.ndarray | None = None, max_outer_mm: float = 0.0):
        self.mask = sitk.GetArrayFromImage(mask).astype(bool)
        sx, sy = mask.GetSpacing()[:2]
        self.pixel_area = sx * sy
        self.fov = fov
        self.max_outer_mm = max_outer_mm
        pad = int(math.ceil(max_outer_mm / min(sx, sy))) + 2 if max_outer_mm > 0 else 0
        self.pad = pad
        padded = np.pad(self.mask, pad)
        self.distance = None
        if max_outer_mm > 0:
            img = sitk.GetImageFromArray(padded.astype(np.uint8))
            img.SetSpacing((sx, sy))
            dist = sitk.SignedMaurerDistanceMap(
                img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
            )
            self.distance = sitk.GetArrayFromImage(dist)

    def make(self, spec: RegionSpec) -> tuple[np.ndarray, RegionStats]:
        """Boolean region on the image grid and its statistics."""
        if spec.is_intra:
            n = int(self.mask.sum())
            return self.mask, RegionStats(n, n * self.pixel_area, 1.0)
        if self.distance is None or spec.outer_mm > self.max_outer_mm:
            raise ValueError(f"{spec.name}: RegionMaker was built for smaller distances")
        d = self.distance
        tol = BOUNDARY_TOL_MM
        outside = ~np.pad(self.mask, self.pad)
        full = outside & (d > spec.inner_mm + tol) & (d <= spec.outer_mm + tol)
        p = self.pad
        region = full[p : full.shape[0] - p, p : full.shape[1] - p].copy()
        if self.fov is not None:
            region &= self.fov
        n_full = int(full.sum())
        n = int(region.sum())
        coverage = n / n_full if n_full else 0.0
        return region, RegionStats(n, n * self.pixel_area, coverage)


def region_image(region: np.ndarray, like: sitk.Image) -> sitk.Image:
    """A uint8 SimpleITK mask of ``region`` on the grid of ``like`` (for pyradiomics)."""
    out = sitk.GetImageFromArray(region.astype(np.uint8))
    out.CopyInformation(like)
    return out


def write_overlay(image: sitk.Image, regions: dict[str, np.ndarray], path, title: str = "") -> None:
    """QA picture: the image with the tumour and each ring outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = sitk.GetArrayViewFromImage(image)
    sx, sy = image.GetSpacing()[:2]
    h, w = arr.shape
    fig, ax = plt.subplots(figsize=(6, 6 * h * sy / (w * sx)))
    ax.imshow(arr, cmap="gray", extent=(0, w * sx, h * sy, 0))
    colors = ["#ff3b30", "#ffcc00", "#34c759", "#0a84ff", "#bf5af2", "#ff9f0a"]
    inside = np.zeros((h, w), dtype=bool)
    for (name, reg), color in zip(regions.items(), colors * 3, strict=False):
        # rings are drawn by their outer edge (ring | tumour), so the tumour outline stays visible
        outline = reg | inside if not name.startswith("intra") else reg
        if name.startswith("intra"):
            inside = reg
        ax.contour(
            np.linspace(0, w * sx, w),
            np.linspace(0, h * sy, h),
            outline.astype(float),
            levels=[0.5],
            colors=[color],
            linewidths=0.8,
        )
        ax.plot([], [], color=color, label=name)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_xlabel("mm")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
