"""Image I/O shared by every annotator: decoding, mode conversion, the reference HWC3 and
resize_image, and encoding of condition maps.

Decoding accepts JPEG, PNG, WebP, BMP, TIFF and GIF (first frame), applies EXIF orientation, and
turns any mode into HxWx3 uint8 RGB, compositing alpha over white as the reference ``HWC3`` does.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, TypeVar

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from annotators.files import DEFAULT_MAX_FILE_BYTES, FileRefusedError, read_regular_file

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DecodedImage",
    "ImageError",
    "decode_image",
    "decode_image_info",
    "encode_image",
    "encode_png",
    "hwc3",
    "load_image",
    "read_image_file",
    "REDUCED_COLOR_FLAGS",
    "jpeg_reduction",
    "resize_decoded",
    "resize_image",
    "resized_size",
    "resize_short_side",
    "single_channel",
]

#: Larger images are refused before their pixels are decoded (decompression-bomb guard).
DEFAULT_MAX_PIXELS = 100_000_000

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})

#: Pillow modes whose pixels are gray levels (after alpha is composited over white).
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

#: What :func:`encode_image` writes; the lossless ones decode to exactly the pixels they were given.
IMAGE_ENCODINGS = ("jpeg", "png", "webp")
LOSSLESS_ENCODINGS = frozenset({"png", "webp"})


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
        # Same as repeating the channel three times; cvtColor is several times faster than np.repeat.
        return cv2.cvtColor(np.ascontiguousarray(x[:, :, 0]), cv2.COLOR_GRAY2RGB)
    rgb = x[:, :, :3].astype(np.float32)
    alpha = x[:, :, 3:4].astype(np.float32) / 255.0
    blended = rgb * alpha + 255.0 * (1.0 - alpha)
    return blended.clip(0, 255).astype(np.uint8)


def resized_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """``(height, width)`` that :func:`resize_image` gives, without resizing."""
    scale = float(resolution) / min(height, width)
    # At least one block of 64 where the reference would round a side to 0 and crash. Python's round
    # rounds half to even, as the reference's np.round does, without numpy's cost on scalars.
    return max(1, round(height * scale / 64.0)) * 64, max(1, round(width * scale / 64.0)) * 64


def _reference_resize(pixels: np.ndarray, size: tuple[int, int], resolution: int) -> np.ndarray:
    """``pixels`` resized to the target that the reference gives an image of ``size`` (height,
    width), with the interpolation it chooses for that image."""
    height, width = size
    new_height, new_width = resized_size(height, width, resolution)
    interpolation = cv2.INTER_LANCZOS4 if resolution > min(height, width) else cv2.INTER_AREA
    return cv2.resize(pixels, (new_width, new_height), interpolation=interpolation)


def resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """The reference ``resize_image``: the short side goes to ``resolution``, both sides are then
    rounded to multiples of 64; LANCZOS4 when enlarging, AREA otherwise (also at scale 1)."""
    return _reference_resize(image, image.shape[:2], resolution)


def resize_decoded(decoded: DecodedImage, resolution: int) -> np.ndarray:
    """:func:`resize_image` of the whole image that ``decoded`` holds, also when its pixels were
    decoded at a reduced scale: the target size and the interpolation are those of the full image.
    Identical to ``resize_image(decoded.pixels, resolution)`` for a full-scale decode."""
    return _reference_resize(decoded.pixels, decoded.size, resolution)


def jpeg_reduction(height: int, width: int, target: tuple[int, int]) -> int:
    """The largest of libjpeg's reduced decoding scales (the denominator: 8, 4 or 2; 1 for a full
    decode) at which a ``height`` x ``width`` JPEG still covers ``target`` (height, width)."""
    return next((d for d in (8, 4, 2) if -(-height // d) >= target[0] and -(-width // d) >= target[1]), 1)


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


def multiple_of_size(
    height: int,
    width: int,
    target: tuple[int, int],
    multiple: int,
    method: Literal["lower_bound", "minimal"],
) -> tuple[int, int]:
    """``(height, width)`` that the MiDaS-family ``Resize`` transform (keep_aspect_ratio=True) gives,
    without resizing: one scale for both sides towards ``target`` (height, width), then each side
    rounded half-to-even to a multiple of ``multiple``.

    ``lower_bound`` (Depth Anything) takes the larger of the two scales and rounds up where rounding
    would fall below the target; ``minimal`` (ZoeDepth's MiDaS core) takes the scale closer to 1.
    A side is never rounded down to 0.
    """
    scale_height, scale_width = target[0] / height, target[1] / width
    if method == "lower_bound":
        scale = scale_width if scale_width > scale_height else scale_height
    else:
        scale = scale_width if abs(1 - scale_width) < abs(1 - scale_height) else scale_height

    def constrain(x: float, minimum: int) -> int:
        y = int(np.round(x / multiple) * multiple)
        if y < minimum:
            y = int(np.ceil(x / multiple) * multiple)
        return max(y, multiple)

    floor_height, floor_width = target if method == "lower_bound" else (0, 0)
    return constrain(scale * height, floor_height), constrain(scale * width, floor_width)


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
    if img.mode in ("L", "RGB"):
        return hwc3(np.asarray(img))  # no convert("RGB"): it would copy the pixels once more
    return np.asarray(img.convert("RGB"))


@dataclass(frozen=True)
class DecodedImage:
    """Decoded pixels plus what a dataset builder needs to know to keep the original file.

    ``plain`` is true when the pixels are exactly what any reader gets by decoding the file and
    converting it to RGB: no EXIF rotation was applied and there was no alpha or high bit depth.
    ``gray`` is true when the file holds gray levels (its three decoded channels are equal).
    ``reduction`` is the scale's denominator when a JPEG was decoded at 1/2, 1/4 or 1/8 of its size
    (1: full size); ``size`` is the image's full (height, width), EXIF orientation applied.
    """

    pixels: np.ndarray
    format: str
    plain: bool
    gray: bool = False
    reduction: int = 1
    size: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.size == (0, 0):
            object.__setattr__(self, "size", (self.pixels.shape[0], self.pixels.shape[1]))


# EXIF orientation -> the numpy operations that undo it (as ImageOps.exif_transpose does).
_ORIENTATION_OPS: dict[int, tuple[str, ...]] = {
    2: ("fliplr",),
    3: ("rot180",),
    4: ("flipud",),
    5: ("transpose",),
    6: ("rot270",),
    7: ("transverse",),
    8: ("rot90",),
}


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    for op in _ORIENTATION_OPS.get(orientation, ()):
        if op == "fliplr":
            pixels = pixels[:, ::-1]
        elif op == "flipud":
            pixels = pixels[::-1]
        elif op == "rot180":
            pixels = pixels[::-1, ::-1]
        elif op == "transpose":
            pixels = pixels.transpose(1, 0, 2)
        elif op == "transverse":
            pixels = pixels[::-1, ::-1].transpose(1, 0, 2)
        elif op == "rot90":  # counter-clockwise, like PIL's ROTATE_90
            pixels = pixels.transpose(1, 0, 2)[::-1]
        elif op == "rot270":
            pixels = pixels.transpose(1, 0, 2)[:, ::-1]
    return np.ascontiguousarray(pixels)


T = TypeVar("T")

# libjpeg recovers from damaged data (random bytes in the scan, a file cut short and closed with an
# end marker) by filling the rest with grey, and says so only as a warning printed to stderr: the
# first one of each decode. These are the warnings that mean the pixels are not the file's.
_CORRUPT_JPEG_WARNINGS = (
    b"Corrupt JPEG data",
    b"Premature end of JPEG file",
    b"Inconsistent progression sequence",
    b"Invalid SOS parameters",
)
# Warnings that do not: padding before the end marker, written by some cameras, follows complete data.
_HARMLESS_JPEG_WARNINGS = (b"extraneous bytes before marker 0xd9", b"unknown JFIF revision", b"Unknown Adobe color transform")
_STDERR_LOCK = threading.Lock()
_stderr_pipe: tuple[int, int, int] | None = None  # (process id, read end, write end)


def _pipe() -> tuple[int, int]:
    """A non-blocking pipe of this process (a forked worker makes its own: the parent's is shared)."""
    global _stderr_pipe
    if _stderr_pipe is None or _stderr_pipe[0] != os.getpid():
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)  # a full pipe drops text instead of blocking the decoder
        _stderr_pipe = (os.getpid(), read_end, write_end)
    return _stderr_pipe[1], _stderr_pipe[2]


def _drain(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _with_libjpeg_warnings(call: Callable[[], T]) -> tuple[T, str | None]:
    """``call()`` with file descriptor 2 sent to a pipe, and libjpeg's corruption warning, if any.
    Anything else written meanwhile (by another thread) is passed on to the real stderr."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to read the warnings from
        return call(), None
    with _STDERR_LOCK:
        read_end, write_end = _pipe()
        _drain(read_end)
        sys.stderr.flush()
        os.dup2(write_end, 2)
        try:
            result = call()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured = _drain(read_end)
    corrupt = None
    passed_on = []
    for line in captured.splitlines(keepends=True):
        if any(marker in line for marker in _CORRUPT_JPEG_WARNINGS) and not any(marker in line for marker in _HARMLESS_JPEG_WARNINGS):
            corrupt = corrupt or line.decode("ascii", "replace").strip()
        elif not any(marker in line for marker in _HARMLESS_JPEG_WARNINGS):
            passed_on.append(line)
    if passed_on:
        os.write(2, b"".join(passed_on))
    return result, corrupt


#: OpenCV's colour decoding flag for each of libjpeg's scales (the denominator, 1: full size)
REDUCED_COLOR_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def _decode_jpeg_checked(data: bytes, source: str | os.PathLike[str] | None, mode: str, reduction: int = 1) -> np.ndarray | None:
    """Decode a JPEG with OpenCV's libjpeg-turbo, refusing one that libjpeg finds corrupt.

    For 8-bit RGB and gray files the pixels are returned: about 1.5x faster than Pillow and
    bit-identical to it (both use libjpeg-turbo's default, exact IDCT and fancy upsampling), at
    1/``reduction`` of the size in each direction (libjpeg's scaled IDCT, as Pillow's ``draft``). Other
    modes (CMYK) are only checked, at 1/8 scale (the whole scan is still read), and None is returned
    for Pillow to decode them: Pillow silences libjpeg's warnings, so it cannot tell."""
    buffer = np.frombuffer(data, np.uint8)
    flags = REDUCED_COLOR_FLAGS[reduction] | cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION if mode in ("RGB", "L") else cv2.IMREAD_REDUCED_GRAYSCALE_8
    pixels, corrupt = _with_libjpeg_warnings(lambda: cv2.imdecode(buffer, flags))
    if corrupt is not None:
        raise ImageError(source, f"corrupt or truncated image (libjpeg: {corrupt})")
    return pixels if mode in ("RGB", "L") else None


_TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def _decode_tiff_fallback(data: bytes, source: str | os.PathLike[str] | None, max_pixels: int) -> DecodedImage:
    """TIFFs that Pillow cannot open (float32 RGB, the usual HDR and scientific layout), through
    OpenCV's libtiff; the size is read from the header first (tifffile), so the pixel limit holds."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            page = tiff.pages.first
            shape, orientation_tag = page.shape, page.tags.get(0x0112)
    except Exception as err:  # tifffile raises many types for malformed headers
        raise ImageError(source, f"corrupt TIFF ({type(err).__name__}: {err})") from None
    height, width = shape[:2] if len(shape) < 3 or shape[-1] <= 4 else shape[-2:]
    if width * height > max_pixels:
        raise ImageError(source, f"image too large ({width}x{height} > {max_pixels} pixels)")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.ndim not in (2, 3):
        raise ImageError(source, "not an image, or an unsupported format")
    if array.dtype.kind == "f":  # as for Pillow's float mode: 0..1 if it fits, else 0..255
        top = 1.0 if np.nanmax(array, initial=0.0) <= 1.0 else 255.0
        array = (np.nan_to_num(array).clip(0, top) * (255.0 / top)).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        top = float(np.iinfo(array.dtype).max) if array.dtype.kind in "ui" else 255.0
        array = (array.astype(np.float64).clip(0, top) * (255.0 / top)).round().astype(np.uint8)
    gray = array.ndim == 2 or array.shape[2] in (1, 2)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA if array.shape[2] == 4 else cv2.COLOR_BGR2RGB) if array.shape[2] in (3, 4) else array[:, :, :1]
    pixels = hwc3(array)
    orientation = int(orientation_tag.value) if orientation_tag is not None else 1
    return DecodedImage(_apply_orientation(pixels, orientation), "TIFF", False, gray)


_PILLOW_LIMIT_LOCK = threading.Lock()


@contextmanager
def _pillow_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, 89.5 MP) raised to
    ``max_pixels`` while opening, so that a larger limit asked for is a larger limit."""
    if Image.MAX_IMAGE_PIXELS is None or max_pixels <= Image.MAX_IMAGE_PIXELS:
        yield
        return
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def read_image_file(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of an image file: a regular file of at most ``max_bytes`` (see
    :func:`annotators.files.read_regular_file`); :class:`ImageError` otherwise."""
    try:
        return read_regular_file(path, max_bytes)
    except FileRefusedError as err:
        raise ImageError(path, err.reason) from None


def decode_image_info(
    data: bytes | str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reduce_for: int | None = None,
) -> DecodedImage:
    """:func:`decode_image`, also telling the format and whether the file could be used as is.

    ``reduce_for`` is the :func:`resize_image` resolution the pixels are for: an 8-bit RGB or gray
    JPEG at least twice as large as that target is then decoded at the largest reduced scale that
    still covers it (:func:`jpeg_reduction`), several times faster than a full decode; pass the
    result to :func:`resize_decoded`. Other images are decoded at full size.
    """
    if not isinstance(data, bytes):
        source = data if source is None else source
        data = read_image_file(data)
    if not data:
        raise ImageError(source, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _pillow_pixel_limit(max_pixels):
                img = Image.open(io.BytesIO(data))
            if img.format not in SUPPORTED_FORMATS:
                raise ImageError(source, f"unsupported image format {img.format}")
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(source, f"image too large ({width}x{height} > {max_pixels} pixels)")
            exif = img.getexif()
            orientation = int(exif.get(0x0112, 1)) if exif else 1
            plain = img.mode in ("RGB", "L") and orientation not in _ORIENTATION_OPS
            gray = img.mode in GRAY_MODES
            if img.format in ("JPEG", "MPO"):
                transposed = orientation in (5, 6, 7, 8)  # the file's rows are the image's columns
                size = (width, height) if transposed else (height, width)
                reduction = 1
                if reduce_for is not None and img.format == "JPEG":
                    target = resized_size(*size, reduce_for)
                    reduction = jpeg_reduction(height, width, target[::-1] if transposed else target)
                checked = _decode_jpeg_checked(data, source, img.mode, reduction)
                if img.format == "JPEG" and checked is not None and checked.shape[:2] == (-(-height // reduction), -(-width // reduction)):
                    return DecodedImage(_apply_orientation(checked, orientation), img.format, plain, gray, reduction, size)
            fmt = img.format
            img.seek(0)  # first frame of animations
            img = ImageOps.exif_transpose(img) if exif else img
            img.load()
            return DecodedImage(np.ascontiguousarray(_to_rgb_array(img)), fmt, plain, gray)
    except ImageError:
        raise
    except UnidentifiedImageError:
        if data.startswith(_TIFF_SIGNATURES):
            return _decode_tiff_fallback(data, source, max_pixels)
        raise ImageError(source, "not an image, or an unsupported format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(source, f"image too large ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(source, f"corrupt or truncated image ({err})") from None


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
    return decode_image_info(data, source=source, max_pixels=max_pixels).pixels


def load_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode the image at ``path``; see :func:`decode_image`."""
    return decode_image(path, max_pixels=max_pixels)


def single_channel(image: np.ndarray) -> np.ndarray:
    """An HxW map as it is; channel 0 of an HxWxC one."""
    return image if image.ndim == 2 else cv2.extractChannel(image, 0)  # contiguous, faster than a numpy slice copy


def encode_png(image: np.ndarray, *, grayscale: bool = False, compression: int | None = None) -> bytes:
    """Lossless PNG bytes for an RGB (or gray) uint8 map; ``grayscale`` stores only channel 0.

    By default OpenCV's own settings (fast level, RLE strategy) are used: on condition maps they
    encode 3-4x faster than an explicit level 1, which switches zlib to its default strategy.
    PNG is lossless at every level.
    """
    if grayscale:
        image = single_channel(image)
    elif image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [] if compression is None else [cv2.IMWRITE_PNG_COMPRESSION, compression]
    ok, buf = cv2.imencode(".png", image, params)
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {image.shape}")
    return buf.tobytes()


def encode_image(image: np.ndarray, fmt: str, *, quality: int = 95, grayscale: bool = False) -> bytes:
    """An HxWx3 RGB uint8 image as ``fmt``: ``jpeg`` (lossy, at ``quality``), ``png`` or ``webp``
    (both lossless). ``grayscale`` stores channel 0 alone in JPEG and PNG; WebP has no gray mode,
    so a gray image is stored there with three equal channels."""
    if fmt == "png":
        return encode_png(image, grayscale=grayscale)
    pixels = single_channel(image) if grayscale and fmt == "jpeg" else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    elif fmt == "webp":
        ok, buf = cv2.imencode(".webp", pixels, [cv2.IMWRITE_WEBP_QUALITY, 101])  # above 100: lossless
    else:
        raise ValueError(f"cannot encode images as {fmt!r}; choose one of {', '.join(IMAGE_ENCODINGS)}")
    if not ok:
        raise ValueError(f"{fmt} encoding failed for an array of shape {image.shape}")
    return buf.tobytes()
