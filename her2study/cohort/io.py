"""Read ultrasound images and masks as 2D SimpleITK images with physical spacing in mm.

Formats: NIfTI, NRRD, MHA (spacing from the header), PNG/JPEG/BMP/TIFF (spacing from the manifest
or config), and ultrasound DICOM (spacing from the Sequence of Ultrasound Regions, in cm).
Nothing here writes next to the input files, and no DICOM header value leaves this module except
the pixel spacing.
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
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array
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
            first = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ""
            raise ImageReadError(
                f"unreadable image ({first})", "check the file is a complete NIfTI/NRRD/MHA/PNG"
            ) from None
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
        what = (
            "DICOM without an ultrasound region calibration" if _is_dicom(path) else "plain image"
        )
        raise ImageReadError(
            f"pixel spacing unknown ({what})",
            "add spacing_x_mm/spacing_y_mm columns to the manifest or set data.spacing_mm",
        )
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
            raise ImageReadError(
                f"multi-frame image ({size[2]} frames/slices); one 2D image per lesion is expected",
                "export the single frame on which the lesion was segmented",
            )
        image = image[:, :, 0]
    elif image.GetDimension() != 2:
        raise ImageReadError(f"{image.GetDimension()}D image", "export a 2D image")
    return image, converted


def read_mask(
    path: str | Path, like: sitk.Image, label: int | None = None, plain_spacing: bool = False
) -> sitk.Image:
    """Read a mask as a binary uint8 image on the grid of ``like``.

    The mask must match the image's size; spacing and origin must match too unless the mask is a
    plain format (PNG etc.), which carries none and takes the image's.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError("file not found", "check the path (relative to the manifest)")
    try:
        mask = sitk.ReadImage(str(path))
    except RuntimeError:
        raise ImageReadError("unreadable mask", "re-save the segmentation from ITK-SNAP") from None
    mask, _ = _squeeze_2d(mask)
    if mask.GetSize() != like.GetSize():
        raise ImageReadError(
            f"mask size {mask.GetSize()} differs from image size {like.GetSize()}",
            "save the segmentation on the same image it was drawn on",
        )
    if not (plain_spacing or path.suffix.lower() in PLAIN_FORMATS):
        if not np.allclose(mask.GetSpacing(), like.GetSpacing(), rtol=1e-3):
            raise ImageReadError(
                f"mask spacing {_fmt(mask.GetSpacing())} differs from image spacing "
                f"{_fmt(like.GetSpacing())} mm",
                "save the segmentation on the same image it was drawn on",
            )
        if not np.allclose(mask.GetOrigin(), like.GetOrigin(), atol=1e-3 * max(like.GetSpacing())):
            raise ImageReadError(
                f"mask origin {_fmt(mask.GetOrigin())} differs from image origin "
                f"{_fmt(like.GetOrigin())} mm",
                "save the segmentation on the same image it was drawn on",
            )
    arr = sitk.GetArrayFromImage(mask)
    values = np.unique(arr)
    nonzero = values[values != 0]
    if label is not None:
        binary = arr == label
    elif len(nonzero) <= 1:
        binary = arr != 0
    elif not all(float(v).is_integer() for v in nonzero):
        raise ImageReadError(
            f"mask holds non-integer values ({len(nonzero)} distinct, e.g. "
            f"{', '.join(f'{v:.3g}' for v in nonzero[:4])}): an interpolated (resampled) mask",
            "re-save the segmentation with nearest-neighbour interpolation, or threshold it at "
            "0.5 to a 0/1 mask (data.mask_label cannot pick a lesion from interpolated values)",
        )
    else:
        shown = ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in nonzero[:6])
        raise ImageReadError(
            f"mask holds several labels ({shown})",
            "set data.mask_label to the label of the lesion",
        )
    out = sitk.GetImageFromArray(binary.astype(np.uint8))
    out.CopyInformation(like)
    return out


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
