"""Pixel values of every image mode PIL reads, mapped to [0, 1] or refused with the reason.

Torch-free, so the index stage applies the same rules at index time (quarantining what training could
not interpret) without importing torch; :func:`camfaith.data.images.to_unit_rgb` builds on them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


class UnsupportedImageError(ValueError):
    """An image that decodes but whose pixel values have no known mapping to [0, 1] (its mode, or its values for that mode)."""


SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
WIDE_MODES = SIXTEEN_BIT_MODES | {"I", "F"}
MAX_16_BIT = 65535


def unit_grey(image: Image.Image) -> np.ndarray:
    """Pixels of a single-channel image wider than 8 bits (a mode in :data:`WIDE_MODES`) as ``[H, W]`` float32 in [0, 1].

    ``I;16*`` (unsigned 16-bit) is divided by 65535. ``I`` (32-bit signed) is divided by 65535 when every value lies in
    0..65535 (a 16-bit greyscale PNG opens as ``I`` in some Pillow versions); ``F`` (32-bit float) is kept as it is when
    every value lies in [0, 1]. Anything else (``I`` or ``F`` values outside those ranges, non-finite ``F`` values, or a
    mode not in :data:`WIDE_MODES`) has no known scale and raises :class:`UnsupportedImageError`, naming the mode and
    the range found.
    """
    mode = image.mode
    if mode not in WIDE_MODES:
        raise UnsupportedImageError(f"mode {mode} is not a wide single-channel mode ({sorted(WIDE_MODES)})")
    # astype gives native-endian values: np.asarray reads I;16B as big-endian '>u2', which astype converts correctly
    values = np.asarray(image)
    if mode in SIXTEEN_BIT_MODES:
        return values.astype(np.float32) / np.float32(MAX_16_BIT)
    if values.size == 0:
        return values.astype(np.float32)
    if mode == "F":
        finite = np.isfinite(values)
        if not finite.all():
            raise UnsupportedImageError(
                f"mode F (32-bit float) holds {int((~finite).sum())} non-finite value(s) (NaN or infinity); they have no pixel value"
            )
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            raise UnsupportedImageError(
                f"mode F (32-bit float) holds values from {low:g} to {high:g}, outside [0, 1]; a float image has no known "
                f"scale, so camfaith cannot map it to [0, 1] (rescale it to [0, 1], or save it as 8- or 16-bit)"
            )
        return values.astype(np.float32)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > MAX_16_BIT:
        raise UnsupportedImageError(
            f"mode I (32-bit signed integer) holds values from {low} to {high}, outside 0..{MAX_16_BIT}; it is not 16-bit "
            f"data and has no known scale, so camfaith cannot map it to [0, 1] (save it as 8- or 16-bit)"
        )
    return values.astype(np.float32) / np.float32(MAX_16_BIT)


def rgb_8bit(image: Image.Image) -> Image.Image:
    """An image of an 8-bit mode as PIL ``RGB``, exactly as PIL's ``convert("RGB")`` makes it.

    Grey (``1``, ``L``) is replicated to three channels, palettes (``P``) are looked up, ``CMYK`` and ``YCbCr`` go
    through PIL's conversions, and alpha (``LA``, ``PA``, ``RGBA``, a palette's transparency) is discarded, not
    composited onto a background. A mode PIL cannot convert raises :class:`UnsupportedImageError`.
    """
    if image.mode == "P" and "transparency" in image.info:
        # Same colours as a direct convert("RGB"), but without PIL's warning that byte-coded transparency should
        # go through RGBA (which would repeat for every such image in a data loader).
        image = image.convert("RGBA")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise UnsupportedImageError(f"mode {image.mode}: PIL cannot convert it to RGB ({error})") from error


def image_problem(image: Image.Image) -> str | None:
    """``None`` if a decoded image's pixels map to [0, 1] by the rules of :func:`unit_grey` and :func:`rgb_8bit`, else why not."""
    try:
        if image.mode in WIDE_MODES:
            unit_grey(image)
        else:
            rgb_8bit(image)
    except UnsupportedImageError as error:
        return f"{type(error).__name__}: {error}"
    return None
