"""PyRadiomics on several masks of one image, filtering the image once.

``RadiomicsFeatureExtractor.execute`` filters the whole image (wavelet, LoG, square, ...) before
cropping to the mask, so extracting the tumour and its rings one ``execute`` at a time filters
the same image once per region. :func:`execute_regions` runs the steps of ``execute`` (pyradiomics
3.x, ``featureextractor.py``) for every mask, but generates each filtered image once and computes
each region's features from it: the same functions on the same inputs in the same order, so the
values are those of ``execute`` bit for bit (tested on real files with the paper settings).

Filtered images are shared only where they cannot depend on the mask: no resampling (that
crops to the mask's bounding box first), segment-based extraction, and no LBP3D (which reads the
mask). Otherwise each mask goes through ``execute`` as before.
"""

from __future__ import annotations

from collections import OrderedDict

_MASK_DEPENDENT_IMAGE_TYPES = {"LBP3D"}


def can_share_filters(extractor) -> bool:
    """Whether every filtered image of ``extractor`` is independent of the mask."""
    settings = extractor.settings
    resampled = (
        settings.get("interpolator") is not None
        and settings.get("resampledPixelSpacing") is not None
    )
    return not (
        resampled
        or settings.get("voxelBased")
        or _MASK_DEPENDENT_IMAGE_TYPES & set(extractor.enabledImagetypes)
    )


def execute_regions(extractor, image, masks: dict, label: int = 1) -> dict:
    """``{name: feature vector or the exception}`` for every ``{name: mask}`` on ``image``.

    A region whose mask pyradiomics rejects (or whose features fail) gets the exception that
    ``execute`` would have raised for it; the other regions are unaffected.
    """
    if not can_share_filters(extractor):
        out = {}
        for name, mask in masks.items():
            try:
                out[name] = extractor.execute(image, mask, label=label)
            except Exception as exc:  # noqa: BLE001 - reported per region by the caller
                out[name] = exc
        return out

    from radiomics import featureextractor, imageoperations

    settings = extractor.settings.copy()
    settings["label"] = label
    if featureextractor.geometryTolerance != settings.get("geometryTolerance"):
        extractor._setTolerance()

    out: dict = {}
    ready: dict = {}  # name -> (feature vector, mask, bounding box)
    loaded = None
    for name, mask in masks.items():
        try:
            img, msk = extractor.loadImage(image, mask, None, **settings)
            bbox, corrected = imageoperations.checkMask(img, msk, **settings)
            if corrected is not None:
                msk = corrected
            reseg = None
            if settings.get("resegmentRange", None) is not None:
                reseg = imageoperations.resegmentMask(img, msk, **settings)
                bbox, _ = imageoperations.checkMask(img, reseg, **settings)
            if settings.get("resegmentShape", False) and reseg is not None:
                msk = reseg
            vector = OrderedDict(extractor.computeShape(img, msk, bbox, **settings))
            if reseg is not None:
                msk = reseg
        except Exception as exc:  # noqa: BLE001 - as execute would raise for this region
            out[name] = exc
            continue
        ready[name] = (vector, msk, bbox)
        loaded = img if loaded is None else loaded  # the same image for every mask (no resampling)
    if ready:
        any_mask = next(iter(ready.values()))[1]
        for image_type, custom in extractor.enabledImagetypes.items():
            args = settings.copy()
            args.update(custom)
            generator = getattr(imageoperations, f"get{image_type}Image")
            for filtered, type_name, kwargs in generator(loaded, any_mask, **args):
                for name in list(ready):
                    vector, msk, bbox = ready[name]
                    try:
                        cropped, cmask = imageoperations.cropToTumorMask(
                            filtered, msk, bbox, padDistance=0
                        )
                        vector.update(
                            extractor.computeFeatures(cropped, cmask, type_name, **kwargs)
                        )
                    except Exception as exc:  # noqa: BLE001 - this region only
                        out[name] = exc
                        del ready[name]
    for name, (vector, _, _) in ready.items():
        out[name] = vector
    return {name: out[name] for name in masks}
