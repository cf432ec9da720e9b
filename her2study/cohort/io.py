"""Read ultrasound images and masks as 2D SimpleITK images with physical spacing in mm.

Formats: NIfTI, NRRD, MHA (spacing from the header), PNG/JPEG/BMP/TIFF (spacing from the manifest
or config), and ultrasound DICOM (spacing from the Sequence of Ultrasound Regions, in cm).
Nothing here writes next to the input files, and no DICOM header value leaves this module except
the pixel spacing.

:func:`read_header` reads a file's size, spacing, origin and pixel type without its pixels; the
manifest's file checks built on it (size limit, geometry, NaN/inf) are in
:mod:`her2study.cohort.checks`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from her2study.errors import Her2StudyError

log = logging.getLogger(__name__)

PLAIN_FORMATS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIXES = {".dcm", ".dicom", ""}
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma weights


class ImageReadError(Her2StudyError, ValueError):
    """An image or mask cannot be used; the message says why and how to fix it."""

    def __init__(self, message: str, fix: str = ""):
        super().__init__(message)
        self.fix = fix


@dataclass
class ImageInfo:
    """What the reader learned about an image besides its pixels."""

    spacing_source: str  # header | dicom_us_regions | manifest | config
    converted_from: str = ""  # e.g. "RGB" when colour was turned to grayscale


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without loading its pixels."""

    size: tuple[int, int]  # (columns, rows)
    spacing: tuple[float, float] | None  # mm; None: the format carries none (PNG, uncalibrated)
    origin: tuple[float, float] | None  # mm; None for plain formats and DICOM
    channels: int
    floating: bool  # float pixels: may hold NaN/inf
    kind: str  # header (NIfTI/NRRD/MHA) | plain (PNG/JPEG/...) | dicom

    @property
    def n_pixels(self) -> int:
        return int(self.size[0]) * int(self.size[1])


def _unreadable(exc: Exception, what: str = "image") -> ImageReadError:
    text = str(exc).strip()
    first = text.splitlines()[-1][:200] if text else ""
    return ImageReadError(
        f"unreadable {what} ({first})", "check the file is a complete NIfTI/NRRD/MHA/PNG"
    )


def _multiframe(frames: int) -> ImageReadError:
    return ImageReadError(
        f"multi-frame image ({frames} frames/slices); one 2D image per lesion is expected",
        "export the single frame on which the lesion was segmented",
    )


def _spacing_unknown(path: Path) -> ImageReadError:
    what = "DICOM without an ultrasound region calibration" if _is_dicom(path) else "plain image"
    return ImageReadError(
        f"pixel spacing unknown ({what})",
        "add spacing_x_mm/spacing_y_mm columns to the manifest or set data.spacing_mm",
    )


def read_header(path: str | Path) -> ImageHeader:
    """Size, spacing, origin and pixel type of an image file, without loading its pixels."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError("file not found", "check the path (relative to the manifest)")
    if _is_dicom(path):
        ds = _dicom_dataset(path, pixels=False)
        rows, cols = int(ds.Rows), int(ds.Columns)
        _check_dicom_decoder(ds)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        return ImageHeader((cols, rows), _dicom_us_spacing(ds), None, samples, False, "dicom")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _unreadable(exc) from None
    size, dim = reader.GetSize(), reader.GetDimension()
    if dim == 3 and size[2] != 1:
        raise _multiframe(size[2])
    if dim not in (2, 3):
        raise ImageReadError(f"{dim}D image", "export a 2D image")
    plain = path.suffix.lower() in PLAIN_FORMATS
    floating = "float" in sitk.GetPixelIDValueAsString(reader.GetPixelID())
    return ImageHeader(
        size=(int(size[0]), int(size[1])),
        spacing=None if plain else tuple(float(v) for v in reader.GetSpacing()[:2]),
        origin=None if plain else tuple(float(v) for v in reader.GetOrigin()[:2]),
        channels=int(reader.GetNumberOfComponents()),
        floating=floating,
        kind="plain" if plain else "header",
    )


def _check_dicom_decoder(ds) -> None:
    """Compressed pixel data need a decoder: say so from the header, before any work."""
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None or not uid.is_compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        available = get_decoder(uid).is_available
    except (NotImplementedError, ValueError):
        available = False
    if not available:
        raise ImageReadError(
            f"DICOM pixel data compressed as {uid.name}, and no installed decoder reads it",
            "install a pydicom decoder plugin (e.g. pylibjpeg with its openjpeg/libjpeg plugins), "
            "or export the image uncompressed",
        )


def _dicom_dataset(path: Path, pixels: bool):
    """The DICOM dataset (header only unless ``pixels``); ImageReadError for unreadable or
    multi-frame files."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=not pixels)
        if pixels:
            ds.pixel_array  # noqa: B018 (decode now: a failure is the file's, reported here)
        else:
            int(ds.Rows), int(ds.Columns)
    except Exception as exc:  # pydicom raises many types for corrupt files
        raise ImageReadError(
            f"unreadable DICOM ({type(exc).__name__}: {exc})",
            "re-export the image from the PACS, or convert it to NIfTI/PNG",
        ) from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            f"multi-frame DICOM ({frames} frames); one 2D image per lesion is expected",
            "export the single frame on which the lesion was segmented",
        )
    return ds


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in {".dcm", ".dicom"}:
        return True
    if path.suffix == "" and path.is_file():
        with open(path, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    return False


def _to_gray(arr: np.ndarray, channels: int) -> np.ndarray:
    if channels in (3, 4):
        return arr[..., :3].astype(np.float64) @ _LUMA
    if channels == 2:  # gray + alpha
        return arr[..., 0].astype(np.float64)
    raise ImageReadError(f"{channels}-channel pixels are not supported", "export grayscale or RGB")


def _dicom_us_spacing(ds) -> tuple[float, float] | None:
    """Pixel spacing (x, y) in mm from the Sequence of Ultrasound Regions, or None."""
    regions = getattr(ds, "SequenceOfUltrasoundRegions", None)
    if not regions:
        return None
    for region in regions:
        dx = getattr(region, "PhysicalDeltaX", None)
        dy = getattr(region, "PhysicalDeltaY", None)
        ux = getattr(region, "PhysicalUnitsXDirection", 3)
        uy = getattr(region, "PhysicalUnitsYDirection", 3)
        # unit code 3 = cm (DICOM PS3.3 C.8.5.5.1.15); other codes (seconds, Hz, ...) are not space
        if dx and dy and int(ux) == 3 and int(uy) == 3:
            return abs(float(dx)) * 10.0, abs(float(dy)) * 10.0
    return None


def _read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None, str]:
    ds = _dicom_dataset(path, pixels=True)
    arr = ds.pixel_array
    converted = ""
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples > 1:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        arr = _to_gray(arr, samples)
        converted = photometric
    elif photometric == "MONOCHROME1":
        arr = arr.max() - arr
    return np.asarray(arr, dtype=np.float32), _dicom_us_spacing(ds), converted


def read_image(
    path: str | Path, spacing_mm: tuple[float, float] | None = None
) -> tuple[sitk.Image, ImageInfo]:
    """Read one 2D grayscale image with spacing in mm.

    Parameters
    ----------
    path : image file.
    spacing_mm : (x, y) spacing from the manifest or config; required for plain formats and for
        DICOM without ultrasound region calibration, and it wins over a file header when given.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError("file not found", "check the path (relative to the manifest)")
    converted = ""
    if _is_dicom(path):
        arr, file_spacing, converted = _read_dicom(path)
        source = "dicom_us_regions"
        image = sitk.GetImageFromArray(arr)
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise _unreadable(exc) from None
        image, converted = _squeeze_2d(image)
        plain = path.suffix.lower() in PLAIN_FORMATS
        file_spacing = None if plain else tuple(image.GetSpacing())
        source = "header"
    if spacing_mm is not None:
        spacing = (float(spacing_mm[0]), float(spacing_mm[1]))
        source = "manifest"
    elif file_spacing is not None:
        spacing = (float(file_spacing[0]), float(file_spacing[1]))
    else:
        raise _spacing_unknown(path)
    if converted:
        log.info("%s: %s image converted to grayscale", path.name, converted)
    if abs(spacing[0] - spacing[1]) > 1e-6 * max(spacing):
        log.info(
            "%s: anisotropic pixel spacing %.4g x %.4g mm (rings are measured in mm)",
            path.name,
            spacing[0],
            spacing[1],
        )
    image.SetSpacing(spacing)
    return sitk.Cast(image, sitk.sitkFloat32), ImageInfo(source, converted)


def read_chroma(path: str | Path) -> np.ndarray | None:
    """Per-pixel ``max - min`` over the colour channels on the 0-255 scale (rows x columns), or
    None for a grayscale source: what :func:`read_image` loses when it converts colour to gray
    (coloured marks are burned-in annotations, see :mod:`her2study.cohort.annotations`)."""
    path = Path(path)
    if _is_dicom(path):
        import pydicom

        ds = pydicom.dcmread(str(path))
        if int(getattr(ds, "SamplesPerPixel", 1) or 1) < 3:
            return None
        arr = ds.pixel_array
        photometric = str(getattr(ds, "PhotometricInterpretation", ""))
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        bits = int(getattr(ds, "BitsStored", 8) or 8)
    else:
        if read_header(path).channels < 3:
            return None
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        bits = 8 * arr.dtype.itemsize if np.issubdtype(arr.dtype, np.integer) else 8
    rgb = np.asarray(arr)[..., :3]
    chroma = (rgb.max(axis=-1).astype(np.float32) - rgb.min(axis=-1)) * (255.0 / (2**bits - 1))
    return chroma[0] if chroma.ndim == 3 else chroma


def _squeeze_2d(image: sitk.Image) -> tuple[sitk.Image, str]:
    """Turn a colour or single-slice 3D image into a 2D scalar image."""
    converted = ""
    channels = image.GetNumberOfComponentsPerPixel()
    if channels > 1:
        arr = sitk.GetArrayFromImage(image)
        gray = _to_gray(arr, channels)
        out = sitk.GetImageFromArray(gray.astype(np.float32))
        out.SetSpacing(image.GetSpacing())
        out.SetOrigin(image.GetOrigin())
        image = out
        converted = {3: "RGB", 4: "RGBA", 2: "gray+alpha"}[channels]
    if image.GetDimension() == 3:
        size = image.GetSize()
        if size[2] != 1:
            raise _multiframe(size[2])
        image = image[:, :, 0]
    elif image.GetDimension() != 2:
        raise ImageReadError(f"{image.GetDimension()}D image", "export a 2D image")
    return image, converted


def read_mask(
    path: str | Path, like: sitk.Image, label: int | None = None, plain_spacing: bool = False
) -> sitk.Image:
    """Read a mask as a binary uint8 image on the grid of ``like``.

    The mask must match the image's size; spacing and origin must match too unless the mask is a
    plain format (PNG etc.), which carries none and takes the image's. (The manifest check,
    :func:`check_mask`, compares the two files' headers, also when the manifest gives spacing.)
    """
    mask = _read_mask_pixels(path)
    if mask.GetSize() != like.GetSize():
        raise _size_mismatch(mask.GetSize(), like.GetSize())
    if not (plain_spacing or Path(path).suffix.lower() in PLAIN_FORMATS):
        _compare_geometry(mask.GetSpacing(), mask.GetOrigin(), like.GetSpacing(), like.GetOrigin())
    arr = sitk.GetArrayViewFromImage(mask)
    lesion = _lesion_values(_unique_values(arr), label)
    out = sitk.GetImageFromArray(np.isin(arr, lesion).astype(np.uint8))
    out.CopyInformation(like)
    return out


def _read_mask_pixels(path: str | Path) -> sitk.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageReadError("file not found", "check the path (relative to the manifest)")
    try:
        mask = sitk.ReadImage(str(path))
    except RuntimeError:
        raise ImageReadError("unreadable mask", "re-save the segmentation from ITK-SNAP") from None
    return _squeeze_2d(mask)[0]


def _size_mismatch(mask_size, image_size) -> ImageReadError:
    return ImageReadError(
        f"mask size {tuple(mask_size)} differs from image size {tuple(image_size)}",
        "save the segmentation on the same image it was drawn on",
    )


def _compare_geometry(mask_spacing, mask_origin, spacing, origin) -> None:
    if not np.allclose(mask_spacing, spacing, rtol=1e-3):
        raise ImageReadError(
            f"mask spacing {_fmt(mask_spacing)} differs from image spacing {_fmt(spacing)} mm",
            "save the segmentation on the same image it was drawn on",
        )
    if not np.allclose(mask_origin, origin, atol=1e-3 * max(spacing)):
        raise ImageReadError(
            f"mask origin {_fmt(mask_origin)} differs from image origin {_fmt(origin)} mm",
            "save the segmentation on the same image it was drawn on",
        )


def _unique_values(arr: np.ndarray, rows_per_block: int = 512) -> np.ndarray:
    """``np.unique(arr)`` by blocks of rows (no full-size sorted copy of a large mask)."""
    found = [np.unique(arr[i : i + rows_per_block]) for i in range(0, arr.shape[0], rows_per_block)]
    return np.unique(np.concatenate(found)) if found else np.array([])


def _lesion_values(values: np.ndarray, label: int | None) -> np.ndarray:
    """The mask values that mark the lesion: ``label``, else the one non-zero value."""
    nonzero = values[values != 0]
    if label is not None:
        return values[values == label]
    if len(nonzero) <= 1:
        return nonzero
    if not all(float(v).is_integer() for v in nonzero):
        raise ImageReadError(
            f"mask holds non-integer values ({len(nonzero)} distinct, e.g. "
            f"{', '.join(f'{v:.3g}' for v in nonzero[:4])}): an interpolated (resampled) mask",
            "re-save the segmentation with nearest-neighbour interpolation, or threshold it at "
            "0.5 to a 0/1 mask (data.mask_label cannot pick a lesion from interpolated values)",
        )
    shown = ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in nonzero[:6])
    raise ImageReadError(
        f"mask holds several labels ({shown})",
        "set data.mask_label to the label of the lesion",
    )


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
