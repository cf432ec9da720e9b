"""Burned-in annotations (calipers, crosses, dotted lines, text, colour marks) in ultrasound frames.

Scanners draw overlays on top of the formed image: their pixels are at (or near) the image's
maximum grey level, or coloured in an RGB source, and their edges are sharp. A bright echo
(a speckle peak, a calcification, a specular boundary) is blurred by the system's point-spread
function instead, so the pixels touching it are almost as bright as it is. A pixel is flagged as
an overlay pixel when

* it is coloured: ``max(R, G, B) - min(R, G, B) >= COLOUR_CHROMA`` (on the 0-255 scale); or
* it lies within ``NEAR_MAX`` of the image's grey-level range (1st percentile to maximum) below
  the maximum, and the connected bright structure it belongs to stands at least
  ``EDGE_CONTRAST`` of that range above the median of the pixels right next to it.

Checked on drawn caliper crosses, dotted lines and bitmap text against the synthetic cohort's
speckle and calcifications (``tests/test_us_inputs.py``): over the 209 default synthetic frames
the largest edge contrast of a near-maximum structure is 0.18 of the range (median 0.06), and no
pixel is flagged; text drawn over bright tissue (about 180 of 255) stands 0.27-0.32 above its
neighbours, a caliper cross or dots over the lesion 0.6-1.0. Overlays drawn in a mid grey,
smoothed (anti-aliased) so much that they have no sharp edge, or drawn on tissue as bright as
they are, are not found; a frame whose speckle is not blurred at all (independent noise per
pixel) has isolated flagged pixels, below ``MIN_PIXELS`` per case.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

NEAR_MAX = 0.05  # candidates: within this fraction of the grey-level range below the maximum
EDGE_CONTRAST = 0.22  # a structure's mean minus the median of its neighbours, fraction of range
COLOUR_CHROMA = 40.0  # max - min over R, G, B on the 0-255 scale: a coloured pixel
MIN_PIXELS = 5  # a case is flagged from this many overlay pixels inside its analysed regions


def overlay_pixels(
    gray: np.ndarray,
    chroma: np.ndarray | None = None,
    area: np.ndarray | None = None,
    margin: int = 3,
) -> np.ndarray:
    """Boolean map of overlay pixels (see the module docstring), computed near ``area`` only.

    Parameters
    ----------
    gray : the grayscale image (any numeric type), rows x columns.
    chroma : per-pixel ``max - min`` over the colour channels of an RGB source (0-255 scale),
        or None for a grayscale source.
    area : where to look (boolean, same shape); None: the whole image.
    margin : pixels around ``area`` that are included so that structures cut by its edge keep
        their neighbours.
    """
    gray = np.asarray(gray)
    out = np.zeros(gray.shape, dtype=bool)
    if area is None:
        area = np.ones(gray.shape, dtype=bool)
    if not area.any():
        return out
    rows, cols = np.nonzero(area)
    r0, r1 = max(rows.min() - margin, 0), min(rows.max() + margin + 1, gray.shape[0])
    c0, c1 = max(cols.min() - margin, 0), min(cols.max() + margin + 1, gray.shape[1])
    finite = gray[np.isfinite(gray)] if np.issubdtype(gray.dtype, np.floating) else gray
    hi = float(finite.max())
    lo = float(np.percentile(finite, 1))
    crop = gray[r0:r1, c0:c1].astype(np.float64)
    flagged = np.zeros(crop.shape, dtype=bool)
    if hi > lo:
        span = hi - lo
        bright = crop >= hi - NEAR_MAX * span
        labels, n = ndimage.label(bright, structure=np.ones((3, 3)))
        if n:
            ring = ndimage.binary_dilation(bright, structure=np.ones((3, 3))) & ~bright
            owner = ndimage.grey_dilation(labels, size=(3, 3))
            owner[~ring] = 0
            idx = np.arange(1, n + 1)
            inside = np.asarray(ndimage.mean(crop, labels, idx))
            around = np.asarray(ndimage.median(crop, owner, idx), dtype=np.float64)
            has_ring = np.asarray(ndimage.sum(ring, owner, idx)) > 0
            sharp = has_ring & (inside - around >= EDGE_CONTRAST * span)
            flagged = sharp[labels - 1] & (labels > 0)
    if chroma is not None:
        flagged |= np.asarray(chroma)[r0:r1, c0:c1] >= COLOUR_CHROMA
    out[r0:r1, c0:c1] = flagged
    return out
