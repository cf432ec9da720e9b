"""Ring geometry against analytic areas, bands, clipping coverage."""

import math

import numpy as np
import pytest
import SimpleITK as sitk

from her2study.regions import RegionMaker, band_spec, region_specs, ring_spec


def disk_mask(radius_mm, spacing, fov_mm=30.0, center_mm=None):
    sx, sy = spacing
    w, h = int(round(fov_mm / sx)), int(round(fov_mm / sy))
    cx, cy = center_mm if center_mm else (fov_mm / 2, fov_mm / 2)
    yy, xx = np.mgrid[:h, :w]
    x, y = (xx + 0.5) * sx - cx, (yy + 0.5) * sy - cy
    img = sitk.GetImageFromArray(((x**2 + y**2) <= radius_mm**2).astype(np.uint8))
    img.SetSpacing(spacing)
    return img


@pytest.mark.parametrize("spacing", [(0.05, 0.05), (0.05, 0.1), (0.1, 0.05)])
@pytest.mark.parametrize("width", [0.5, 1.0, 1.5, 2.0, 3.0])
def test_ring_area_matches_annulus(spacing, width):
    radius = 5.0
    maker = RegionMaker(disk_mask(radius, spacing), None, max_outer_mm=3.0)
    region, stats = maker.make(ring_spec(width))
    expected = math.pi * ((radius + width) ** 2 - radius**2)
    assert stats.area_mm2 == pytest.approx(expected, rel=0.04)
    assert stats.coverage == 1.0
    assert not (region & sitk.GetArrayFromImage(disk_mask(radius, spacing)).astype(bool)).any()


def test_ellipse_ring_anisotropic():
    # ellipse semi-axes a, b: area of the outer parallel curve is pi*a*b + w*perimeter + pi*w^2
    sx, sy = 0.04, 0.08
    a, b, w = 6.0, 3.0, 1.0
    nx, ny = int(30 / sx), int(30 / sy)
    yy, xx = np.mgrid[:ny, :nx]
    x, y = (xx + 0.5) * sx - 15, (yy + 0.5) * sy - 15
    mask = sitk.GetImageFromArray(((x / a) ** 2 + (y / b) ** 2 <= 1).astype(np.uint8))
    mask.SetSpacing((sx, sy))
    perimeter = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))  # Ramanujan
    expected = w * perimeter + math.pi * w**2
    _, stats = RegionMaker(mask, None, 1.0).make(ring_spec(w))
    assert stats.area_mm2 == pytest.approx(expected, rel=0.04)


def test_bands_tile_the_ring():
    mask = disk_mask(4.0, (0.1, 0.1))
    maker = RegionMaker(mask, None, 2.0)
    r2, _ = maker.make(ring_spec(2.0))
    r1, _ = maker.make(ring_spec(1.0))
    b12, _ = maker.make(band_spec(1.0, 2.0))
    assert not (r1 & b12).any()
    assert np.array_equal(r1 | b12, r2)


def test_clipping_reports_coverage():
    # lesion centred 1 mm from the left edge: about half of a 2 mm ring falls outside the image
    mask = disk_mask(3.0, (0.1, 0.1), center_mm=(3.5, 15.0))
    _, full = RegionMaker(disk_mask(3.0, (0.1, 0.1)), None, 2.0).make(ring_spec(2.0))
    _, clipped = RegionMaker(mask, None, 2.0).make(ring_spec(2.0))
    assert 0.55 < clipped.coverage < 0.9
    assert clipped.area_mm2 == pytest.approx(full.area_mm2 * clipped.coverage, rel=0.03)
    fov = np.zeros(sitk.GetArrayFromImage(mask).shape, dtype=bool)
    fov[:, 40:] = True  # a field of view that cuts the ring further
    _, cut = RegionMaker(mask, fov, 2.0).make(ring_spec(2.0))
    assert cut.coverage < clipped.coverage


def test_region_names_and_errors():
    names = [s.name for s in region_specs(True, [1, 0.5, 1.0], [[1, 2], [0, 3]])]
    assert names == ["intra", "peri1mm", "peri0p5mm", "band1to2mm", "peri3mm"]
    with pytest.raises(ValueError, match="ring width"):
        ring_spec(0)
    with pytest.raises(ValueError, match="inner < outer"):
        band_spec(2, 1)
    with pytest.raises(ValueError, match="no region"):
        region_specs(False, [], [])


def test_a_pixel_exactly_on_the_ring_edge_is_decided_the_same_way_however_the_map_was_built():
    """0 < d <= w decided exactly: spacing 0.2 given as float64 (manifest) or as the float32 a
    NIfTI header stores, and maps built for 1 mm only or for 1-3 mm, give one 1 mm ring."""
    import SimpleITK as sitk

    from her2study.regions import RegionMaker, ring_spec

    arr = np.zeros((61, 61), np.uint8)
    arr[25:36, 25:36] = 1  # a square: pixel centres exactly 1.0 mm (5 px) from its edge exist
    rings = []
    for spacing in (0.2, float(np.float32(0.2))):
        for max_outer in (1.0, 3.0):
            mask = sitk.GetImageFromArray(arr)
            mask.SetSpacing((spacing, spacing))
            ring, _ = RegionMaker(mask, None, max_outer).make(ring_spec(1.0))
            rings.append(ring)
    for ring in rings[1:]:
        np.testing.assert_array_equal(ring, rings[0])
    # the pixel 5 columns right of the square's edge (d = 1.0 mm) is inside the 1 mm ring;
    # the one 6 columns right (d = 1.2 mm) is not
    assert rings[0][30, 35 + 5] and not rings[0][30, 35 + 6]
