"""Image I/O shared by every annotator: decoding, mode conversion, the reference HWC3 and
resize_image, and encoding of condition maps.

Decoding accepts JPEG, PNG, WebP, BMP, TIFF and GIF (first frame), applies EXIF orientation, and
turns any mode into HxWx3 uint8 RGB, compositing alpha over white as the reference ``HWC3`` does.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageError",
    "decode_image",
    "encode_png",
    "hwc3",
    "load_image",
    "resize_image",
    "resize_short_side",
    "to_output",
]

#: Larger images are refused before their pixels are decoded (decompression-bomb guard).
DEFAULT_MAX_PIXELS = 100_000_000

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})


class ImageError(ValueError):
    """An image that cannot be used, with the file it came from and the cause."""

    def __init__(self, source: str | os.PathLike[str] | None, reason: str) -> None:
        self.source = str(source) if source is not None else "<bytes>"
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


def hwc3(x: np.ndarray) -> np.ndarray:
    """The reference ``HWC3``: gray is repeated, RGBA is composited over white, RGB is returned as is."""
    if x.dtype != np.uint8:
        raise ValueError(f"hwc3 expects uint8, got {x.dtype}")
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[2] not in (1, 3, 4):
        raise ValueError(f"hwc3 expects HxW, HxWx1, HxWx3 or HxWx4, got shape {x.shape}")
    channels = x.shape[2]
    if channels == 3:
        return x
    if channels == 1:
        return np.repeat(x, 3, axis=2)
    rgb = x[:, :, :3].astype(np.float32)
    alpha = x[:, :, 3:4].astype(np.float32) / 255.0
    blended = rgb * alpha + 255.0 * (1.0 - alpha)
    return blended.clip(0, 255).astype(np.uint8)


def resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """The reference ``resize_image``: the short side goes to ``resolution``, both sides are then
    rounded to multiples of 64; LANCZOS4 when enlarging, AREA otherwise (also at scale 1)."""
    height, width = image.shape[:2]
    scale = float(resolution) / min(height, width)
    # At least one block of 64 where the reference would round a side to 0 and crash.
    new_height = max(1, int(np.round(height * scale / 64.0))) * 64
    new_width = max(1, int(np.round(width * scale / 64.0))) * 64
    interpolation = cv2.INTER_LANCZOS4 if scale > 1 else cv2.INTER_AREA
    return cv2.resize(image, (new_width, new_height), interpolation=interpolation)


def resize_short_side(image: np.ndarray, resolution: int) -> np.ndarray:
    """Aspect-preserving alternative to :func:`resize_image`: the short side goes to exactly
    ``resolution`` and the long side to the nearest pixel, with no rounding to 64."""
    height, width = image.shape[:2]
    scale = float(resolution) / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return image
    interpolation = cv2.INTER_LANCZOS4 if scale > 1 else cv2.INTER_AREA
    return cv2.resize(image, size, interpolation=interpolation)


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL mode to HxWx3 uint8 RGB; alpha (also palette transparency) composited over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit) integer gray: scale the full integer range down to 8 bits.
        arr = np.asarray(img.convert("I") if img.mode != "I" else img, dtype=np.int64)
        top = 65535 if img.mode.startswith("I;16") or arr.max(initial=0) <= 65535 else arr.max()
        return hwc3((arr.clip(0, top) * 255 // top).astype(np.uint8))
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        top = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
        return hwc3((arr.clip(0, top) * (255.0 / top)).round().astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info or img.mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        return hwc3(np.asarray(img))
    if img.mode == "L":
        return hwc3(np.asarray(img))
    return np.asarray(img.convert("RGB"))


def decode_image(
    data: bytes | str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode an encoded image (bytes or a path) into HxWx3 uint8 RGB with EXIF orientation applied.

    Raises :class:`ImageError` naming ``source`` (or the path) for empty, corrupt, truncated,
    unsupported or over-size input.
    """
    if not isinstance(data, bytes):
        source = data if source is None else source
        try:
            data = Path(data).read_bytes()
        except OSError as err:
            raise ImageError(source, f"cannot read file ({err.strerror or err})") from None
    if not data:
        raise ImageError(source, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in SUPPORTED_FORMATS:
                raise ImageError(source, f"unsupported image format {img.format}")
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(source, f"image too large ({width}x{height} > {max_pixels} pixels)")
            img.seek(0)  # first frame of animations
            img = ImageOps.exif_transpose(img) if img.getexif() else img
            img.load()
            return np.ascontiguousarray(_to_rgb_array(img))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(source, "not an image, or an unsupported format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(source, f"image too large ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(source, f"corrupt or truncated image ({err})") from None


def load_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode the image at ``path``; see :func:`decode_image`."""
    return decode_image(path, max_pixels=max_pixels)


def encode_png(image: np.ndarray, *, grayscale: bool = False, compression: int = 1) -> bytes:
    """Lossless PNG bytes for an RGB (or gray) uint8 map; ``grayscale`` stores only channel 0.

    Compression level 1 keeps encoding fast; PNG is lossless at every level.
    """
    if grayscale and image.ndim == 3:
        image = image[:, :, 0]
    elif image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {image.shape}")
    return buf.tobytes()


def to_output(image: np.ndarray, output_type: Literal["numpy", "pil"] = "numpy") -> np.ndarray | Image.Image:
    """Return a map as a numpy array or a PIL image."""
    if output_type == "numpy":
        return image
    if output_type == "pil":
        return Image.fromarray(image)
    raise ValueError(f"output_type must be 'numpy' or 'pil', got {output_type!r}")
