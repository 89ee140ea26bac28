"""Decode dataset images and masks into fixed-size uint8 arrays, refusing bad files clearly.

Every image of a benchmark is squeezed to ``size`` x ``size`` pixels: the aspect ratio is
**not** kept (Magnetic Tile images range from about 100 to 600 px per side and are not
square). Stretching keeps every defect pixel in view, where a centre crop could cut a defect
off the edge of the tile.

Pixels are taken as stored: EXIF orientation is ignored, because masks (PNG, without EXIF) were
drawn on the stored pixels and must stay aligned with their images.

Everything that can go wrong with a file (empty, truncated, not an image, a decompression
bomb, a pixel mode with no meaning as a photo) becomes a :class:`DatasetError` that names it.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from scarce.trainer.datasets.base import DatasetError

__all__ = ["MAX_PIXELS", "decode_image", "decode_mask", "encode_png"]

#: Largest width x height accepted, checked from the header before any pixel is decoded.
#: 40 MP is far above any inspection camera image in the report's datasets and keeps one
#: decoded RGB image under about 120 MB.
MAX_PIXELS = 40_000_000

# Only plain raster formats are opened (camera MPO files still open through JPEG): PIL would
# otherwise also try EPS (which runs Ghostscript) and dozens of exotic parsers on whatever bytes
# a bucket holds.
_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "PPM")
_MODES = {1: "L", 3: "RGB"}
# 16-bit modes are scaled to 8 bits here: PIL's own conversion clips everything above 255.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# 32-bit integer and float pixels have no fixed range, so there is no honest 8-bit version.
_REFUSED_MODES = {"I": "32-bit integer", "F": "32-bit float"}


def decode_image(data: bytes, *, channels: int, size: int, name: str) -> np.ndarray:
    """Decode an image file to a ``uint8`` array of shape ``[channels, size, size]``.

    Parameters
    ----------
    data:
        The file's bytes (PNG, JPEG, BMP, TIFF, GIF, WebP or PPM).
    channels:
        1 for grayscale (PIL mode ``L``), 3 for ``RGB``. Colour images asked for 1 channel are
        converted with PIL's ITU-R 601-2 luma transform; alpha is dropped.
    size:
        Side of the square output. The image is resized with PIL's bilinear filter, which is
        antialiased when shrinking; the aspect ratio is not kept.
    name:
        The file's name or key, used in error messages.

    Raises
    ------
    DatasetError
        The data is empty, truncated or not an image, has more than :data:`MAX_PIXELS` pixels,
        or has a pixel mode that cannot be converted.
    """
    _check_args(size=size, channels=channels)
    image = _open(data, name)
    pixels = _to_mode(image, _MODES[channels], name)
    resized = pixels.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.uint8)
    if channels == 1:
        return array[np.newaxis, :, :].copy()
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def decode_mask(data: bytes, *, size: int, name: str) -> np.ndarray:
    """Decode a pixel mask to a ``uint8`` array of shape ``[size, size]`` holding 0 or 255.

    Masks come in two kinds: palette or label masks (a palette image, or values 0/1), where any
    non-zero index is a defect, and grey/white masks, thresholded at 127. The mask is resized
    with nearest-neighbour sampling (so no grey edge pixels are invented).
    Raises :class:`DatasetError` naming ``name`` for the same reasons as :func:`decode_image`.
    """
    _check_args(size=size, channels=1)
    image = _open(data, name)
    if image.mode == "P":
        # Palette masks (e.g. Marble's crack masks) store the class as the index: 0 = none.
        index = np.asarray(image.resize((size, size), Image.Resampling.NEAREST))
        return np.where(index > 0, 255, 0).astype(np.uint8)
    gray = np.asarray(
        _to_mode(image, "L", name).resize((size, size), Image.Resampling.NEAREST), dtype=np.uint8
    )
    threshold = 0 if gray.max(initial=0) <= 1 else 127  # 0/1 label masks vs 0/255 masks
    return np.where(gray > threshold, 255, 0).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    """Encode a ``uint8`` array, ``[H, W]`` or ``[C, H, W]`` with C in {1, 3}, as PNG bytes.

    The output is byte-identical for identical input (fixed compression level, no metadata),
    which lets generated data be compared by hash.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"array: must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    elif array.ndim != 2:
        raise ValueError(f"array: must be [H, W] or [C, H, W] with C 1 or 3, got {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _check_args(*, size: int, channels: int) -> None:
    if channels not in _MODES:
        raise ValueError(f"channels: must be 1 or 3, got {channels!r}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size: must be a positive integer, got {size!r}")


def _open(data: bytes, name: str) -> Image.Image:
    """Open and fully decode ``data``; every failure becomes a DatasetError naming ``name``."""
    if not data:
        raise DatasetError(f"{name}: empty file (0 bytes), not an image")
    try:
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; make the warning an error.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_FORMATS)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise DatasetError(
                    f"{name}: {width}x{height} = {width * height:,} pixels is over the limit of "
                    f"{MAX_PIXELS:,} pixels (possible decompression bomb)"
                )
            # open() reads only the header; load() decodes every pixel, so a truncated file
            # fails here and not later inside a training loop.
            image.load()
    except DatasetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetError(
            f"{name}: over the pixel limit (possible decompression bomb): {exc}"
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise DatasetError(
            f"{name}: not a readable image (not one of {', '.join(_FORMATS)}, "
            "or its header is damaged)"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as exc:
        # PIL reports truncated or corrupt data with any of these, depending on the plugin.
        raise DatasetError(f"{name}: corrupt or truncated image data ({exc})") from exc
    return image


def _to_mode(image: Image.Image, mode: str, name: str) -> Image.Image:
    """Convert ``image`` to ``mode`` ('L' or 'RGB'), scaling 16-bit pixels to 8 bits."""
    if image.mode == mode:
        return image
    if image.mode in _REFUSED_MODES:
        raise DatasetError(
            f"{name}: unsupported pixel mode {image.mode!r} ({_REFUSED_MODES[image.mode]} "
            "pixels have no fixed range); save it as 8- or 16-bit"
        )
    if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.uint32)
        gray = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
        return gray if mode == "L" else gray.convert(mode)
    try:
        return image.convert(mode)
    except ValueError:
        pass
    try:
        # Some modes (LAB) convert to RGB but not straight to L.
        return image.convert("RGB").convert(mode)
    except ValueError as exc:
        raise DatasetError(
            f"{name}: unsupported pixel mode {image.mode!r}, cannot convert it to {mode!r}"
        ) from exc
