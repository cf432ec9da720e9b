"""The manifest check of one case's files, from their headers: no image pixels are loaded.

:func:`check_image`: readable, 2D, at most ``max_pixels`` pixels (from the header, before any
pixel is read), spacing known, and no NaN/inf in a floating-point image (scanned by blocks:
NIfTI float data from the file itself, because ITK's NIfTI reader turns NaN and inf into 0;
MetaImage streamed by rows). :func:`check_mask`: the mask against its image's header (size;
spacing and origin whenever both formats carry them, whatever spacing the manifest gives), one
lesion label, empty or touching the edge; it reads the mask's pixels, not the image's.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from her2study.cohort.io import (
    ImageHeader,
    ImageReadError,
    _compare_geometry,
    _lesion_values,
    _read_mask_pixels,
    _size_mismatch,
    _spacing_unknown,
    _unique_values,
    _unreadable,
    read_header,
)


@dataclass(frozen=True)
class MaskFacts:
    """What the manifest check needs to know about a mask's pixels."""

    has_lesion: bool
    touches_edge: bool


def check_image(
    path: str | Path,
    spacing_mm: tuple[float, float] | None = None,
    max_pixels: int | None = None,
) -> ImageHeader:
    """Everything the manifest check asks of an image, from its header (plus a NaN/inf scan of
    floating-point pixels): readable, 2D, at most ``max_pixels`` pixels, spacing known."""
    path = Path(path)
    header = read_header(path)
    if max_pixels is not None and header.n_pixels > max_pixels:
        w, h = header.size
        raise ImageReadError(
            f"image is {w} x {h} = {header.n_pixels / 1e6:.1f} million pixels, above the limit "
            f"data.max_image_pixels={max_pixels:_} (about {_mib(header.n_pixels * 20)} MiB "
            "would be needed to analyse it)",
            "crop the frame to the scan area or downsample it, or raise data.max_image_pixels "
            "(null: no limit) if the machine has the memory",
        )
    if header.channels not in (1, 2, 3, 4):
        raise ImageReadError(
            f"{header.channels}-channel pixels are not supported", "export grayscale or RGB"
        )
    if spacing_mm is None and header.spacing is None:
        raise _spacing_unknown(path)
    if header.floating:
        _check_finite(path)
    return header


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f}"


_NIFTI_FLOAT = {16: "f4", 64: "f8"}  # NIfTI datatype codes: FLOAT32, FLOAT64
_CHUNK_BYTES = 1 << 24


def _nifti_float_layout(path: Path) -> tuple[int, np.dtype, int] | None:
    """(data offset, dtype, number of voxels) of a NIfTI-1/2 file holding float data, else None."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(540)
    except (OSError, EOFError):
        return None
    for endian in ("<", ">"):
        size = int(np.frombuffer(head[:4], f"{endian}i4")[0]) if len(head) >= 348 else 0
        if size in (348, 540):
            break
    else:
        return None
    if size == 348:
        dims = np.frombuffer(head[40:56], f"{endian}i2").astype(int)
        code = int(np.frombuffer(head[70:72], f"{endian}i2")[0])
        offset = int(np.frombuffer(head[108:112], f"{endian}f4")[0])
    elif len(head) == 540:
        code = int(np.frombuffer(head[12:14], f"{endian}i2")[0])
        dims = np.frombuffer(head[16:80], f"{endian}i8").astype(int)
        offset = int(np.frombuffer(head[168:176], f"{endian}i8")[0])
    else:
        return None
    if code not in _NIFTI_FLOAT or not 1 <= dims[0] <= 7:
        return None
    n = math.prod(int(d) for d in dims[1 : dims[0] + 1])
    return max(offset, size), np.dtype(f"{endian}{_NIFTI_FLOAT[code]}"), n


def _nifti_float_chunks(path: Path, offset: int, dtype: np.dtype, n: int):
    """The voxel values of a float NIfTI file, in chunks, as stored (NaN and inf kept)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        fh.seek(offset)
        left = n * dtype.itemsize
        while left > 0:
            buf = fh.read(min(left, _CHUNK_BYTES))
            if not buf:
                return
            left -= len(buf)
            yield np.frombuffer(buf[: len(buf) - len(buf) % dtype.itemsize], dtype)


def _whole(path: Path):
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise _unreadable(exc) from None
    yield sitk.GetArrayViewFromImage(image)  # the generator keeps ``image`` alive meanwhile


def _streamed_rows(path: Path):
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = list(reader.GetSize())
    step = max(1, _CHUNK_BYTES // (4 * size[0] * reader.GetNumberOfComponents()))
    for y in range(0, size[1], step):
        index = [0] * len(size)
        index[1] = y
        block = [size[0], min(step, size[1] - y)] + size[2:]
        reader.SetExtractIndex(index)
        reader.SetExtractSize(block)
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise _unreadable(exc) from None
        yield sitk.GetArrayViewFromImage(image)


def _check_finite(path: Path) -> None:
    """Raise naming how many pixels are NaN or infinite (features of them are meaningless)."""
    n_nan = n_inf = 0
    layout = _nifti_float_layout(path) if ".nii" in path.name.lower() else None
    if layout is not None:
        chunks = _nifti_float_chunks(path, *layout)
    elif path.suffix.lower() in (".mha", ".mhd"):
        chunks = _streamed_rows(path)  # MetaImage streams: only a block of rows in memory
    else:  # NRRD and the rest: ITK reads the whole file for any region, so read it once
        chunks = _whole(path)
    for chunk in chunks:
        n_nan += int(np.isnan(chunk).sum())
        n_inf += int(np.isinf(chunk).sum())
    if n_nan or n_inf:
        found = " and ".join(
            t for t in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else "") if t
        )
        raise ImageReadError(
            f"{found} pixel value(s) in the image: features would be NaN or fail",
            "re-export the image with finite values (e.g. replace NaN/inf by 0 outside the scan "
            "area, or by the nearest valid value inside it)",
        )


def check_mask(path: str | Path, image: ImageHeader, label: int | None = None) -> MaskFacts:
    """The manifest check of one mask against its image's header: same size; same spacing and
    origin whenever both files carry them (whatever spacing the manifest gives); one lesion label
    (or ``label``). Reads the mask's pixels (not the image's) in row blocks."""
    path = Path(path)
    try:
        header = read_header(path)
    except ImageReadError as err:
        if str(err).startswith("unreadable"):
            raise ImageReadError(
                "unreadable mask", "re-save the segmentation from ITK-SNAP"
            ) from None
        raise
    if header.size != image.size:
        raise _size_mismatch(header.size, image.size)
    if image.kind == header.kind == "header":
        _compare_geometry(header.spacing, header.origin, image.spacing, image.origin)
    mask = _read_mask_pixels(path)  # kept referenced: the view below shares its buffer
    arr = sitk.GetArrayViewFromImage(mask)
    lesion = _lesion_values(_unique_values(arr), label)
    if not len(lesion):
        return MaskFacts(False, False)
    edges = (arr[0, :], arr[-1, :], arr[:, 0], arr[:, -1])
    return MaskFacts(True, any(np.isin(e, lesion).any() for e in edges))
