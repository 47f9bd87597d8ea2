"""Reading images and masks of any common kind into uint8 arrays, with one-line errors.

Accepted: PNG, JPEG, BMP, TIFF; modes 1, L, P, RGB, RGBA, LA, I;16 / I (16-bit), F.
Images come back as HxWx3 uint8 (``mode="RGB"``) or HxW uint8 (``mode="L"``); masks as HxW bool.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from defectlab.errors import BadInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
Image.MAX_IMAGE_PIXELS = 200_000_000  # larger than any inspection image; guards decompression bombs


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str  # PIL mode as stored: "L", "RGB", "RGBA", "P", "I;16", ...

    @property
    def channels(self) -> int:
        return {"1": 1, "L": 1, "P": 1, "I": 1, "F": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}.get(
            self.mode, 1 if self.mode.startswith("I;") else 3
        )


def read_info(path: str | Path) -> ImageInfo:
    """Header-only read of size and mode (cheap: no pixel decoding)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return ImageInfo(im.width, im.height, im.mode)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInputError(path, _problem(exc)) from None


def _problem(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (unrecognised file format)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large ({exc})"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    msg = str(exc).strip() or type(exc).__name__
    if "truncated" in msg.lower() or "broken data stream" in msg.lower():
        return f"corrupt or truncated image ({msg})"
    return f"cannot decode image ({msg})"


def _open_pixels(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            im.load()  # force full decode so truncation is detected here
        return im
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise BadInputError(path, _problem(exc)) from None


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float grayscale -> L, scaling the used range of the dtype, not clipping."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float32)  # float32: 4 bytes per pixel, not 8 (large images)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if im.mode == "F":
            top = max(float(arr.max()), 1.0) if arr.max() > 1.0 else 1.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return im


def to_mode(im: Image.Image, mode: str) -> Image.Image:
    im = _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA"):
        # Composite on black: the alpha channel carries no defect information.
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im.convert("RGBA"))
    return im.convert(mode)


def load_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """HxWx3 (RGB) or HxW (L) uint8 array. Raises BadInputError naming the file."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(path, "file not found")
    im = _open_pixels(path)
    return np.asarray(to_mode(im, mode))


def load_pil(path: str | Path, mode: str = "RGB") -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise BadInputError(path, "file not found")
    return to_mode(_open_pixels(path), mode)


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """HxW bool mask. Values need not be strictly 0/255: 0/1 masks count >0 as defect, otherwise
    the threshold is half the range (JPEG-compressed masks carry noise near 0 and 255).
    ``size`` is the expected (width, height): a mask of another size is an error.
    """
    path = Path(path)
    if not path.exists():
        raise BadInputError(path, "mask file not found")
    im = _open_pixels(path)
    if size is not None and im.size != tuple(size):
        raise BadInputError(
            path, f"mask is {im.size[0]}x{im.size[1]} but its image is {size[0]}x{size[1]}"
        )
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        top = arr.max()
        return arr > (0 if top <= 1 else (32767 if top > 255 else 127))
    if im.mode == "1":
        return np.asarray(im).astype(bool)
    arr = np.asarray(to_mode(im, "L"))
    return arr > (0 if arr.max() <= 1 else 127)


# -- decoding for a model: bounded by what the model needs, not by the upload --------------------------------

DEFAULT_MAX_PIXELS = 40_000_000  # decode limit (width x height of the file), checked from the header
SOURCE_SIZE_KEY = "defectlab_source_size"  # PIL info key: (width, height) of the file before reduce-on-load
_QUARTER_TURN = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_T = Image.Transpose
_TRANSPOSE = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE,
              6: _T.ROTATE_270, 7: _T.TRANSVERSE, 8: _T.ROTATE_90}  # as ImageOps.exif_transpose


class ImageRefused(BadInputError):
    """An image refused before or while decoding; ``status`` is the HTTP status the service answers with
    (400 empty, 413 too many pixels, 415 not an image, 422 broken or too small)."""

    def __init__(self, path: str | Path, problem: str, status: int) -> None:
        super().__init__(path, problem)
        self.status = status


@dataclass
class Decoded:
    """An image decoded for a model: ``image`` is at most a few times the model's input (reduced on load by
    an integer factor); ``width``/``height`` are the file's own size (after EXIF orientation)."""

    image: Image.Image
    width: int
    height: int

    @property
    def factor(self) -> tuple[float, float]:
        """Original / working size per axis (1.0 when the image was not reduced)."""
        return self.width / self.image.width, self.height / self.image.height


# ``fit(width, height) -> (w, h)``: the input size the model needs for an image of that size; raises
# BadInputError when the model refuses it (too small, or over its pixel budget).
Fit = Callable[[int, int], tuple[int, int]]


def decode_for_model(source: str | Path | bytes, *, fit: Fit | None = None, mode: str = "RGB",
                     max_pixels: int = DEFAULT_MAX_PIXELS, max_work_pixels: int | None = None,
                     formats: tuple[str, ...] | None = None, name: str = "<upload>") -> Decoded:
    """Decode a file or bytes for inference: pixel limit (``max_pixels``) from the header, EXIF orientation
    applied; an image over ``max_work_pixels`` is decoded straight to a smaller size, never below what the
    model needs (``fit``): JPEG draft mode, then ``Image.reduce``. So memory after decoding follows the
    model's input, not the upload. Every refusal is an ``ImageRefused``."""
    label = Path(source) if isinstance(source, (str, Path)) else Path(name)
    if isinstance(source, bytes) and not source:
        raise ImageRefused(label, "empty upload: send an image file", 400)
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise ImageRefused(label, "file not found", 422)
    fp = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is ours
            im = Image.open(fp, formats=formats)
    except UnidentifiedImageError:
        raise ImageRefused(label, "not an image (unrecognised file format)", 415) from None
    except Image.DecompressionBombError as exc:
        raise ImageRefused(label, f"image has too many pixels ({exc})", 413) from None
    except Exception as exc:  # noqa: BLE001 - a decoder's failure is the file's fault
        raise ImageRefused(label, f"broken image header ({type(exc).__name__}: {exc})", 422) from None
    pixels = im.width * im.height
    if pixels > max_pixels:
        raise ImageRefused(label, f"image is {im.width}x{im.height} = {pixels} pixels; "
                                  f"the limit is {max_pixels}", 413)
    if pixels == 0:
        raise ImageRefused(label, "image has no pixels", 422)
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, like a missing one
        orientation = 1
    width, height = (im.height, im.width) if orientation in _QUARTER_TURN else (im.width, im.height)
    try:
        need = fit(width, height) if fit is not None else (width, height)
    except ImageRefused as exc:  # the model's own limits, named with this file
        raise ImageRefused(label, exc.problem, exc.status) from None
    raw_need = (need[1], need[0]) if orientation in _QUARTER_TURN else need  # (w, h) in the file's own axes
    reduce = _reduce_factor((im.width, im.height), raw_need, max_work_pixels)
    try:
        if reduce > 1 and im.format == "JPEG":
            im.draft(im.mode, (-(-im.width // reduce), -(-im.height // reduce)))  # DCT scaling: 1/2, 1/4, 1/8
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
        im = to_mode(im, mode)
        rest = _reduce_factor((im.width, im.height), raw_need, max_work_pixels)  # what draft mode left
        if rest > 1:
            im = im.reduce(rest)
        if orientation in _TRANSPOSE:  # what ImageOps.exif_transpose does, on the reduced image
            im = im.transpose(_TRANSPOSE[orientation])
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's fault
        msg = str(exc).strip() or type(exc).__name__
        raise ImageRefused(label, f"corrupt or truncated image ({msg})", 422) from None
    im.info[SOURCE_SIZE_KEY] = (width, height)
    return Decoded(im, width, height)


def _reduce_factor(size: tuple[int, int], need: tuple[int, int], max_work_pixels: int | None) -> int:
    """1 for an image of at most ``max_work_pixels`` (decoded as is, exactly as in training); else the
    smallest integer factor that brings it under, never below ``need`` on either axis."""
    if max_work_pixels is None or size[0] * size[1] <= max_work_pixels:
        return 1
    largest = max(1, min(size[0] // max(1, need[0]), size[1] // max(1, need[1])))
    return min(largest, math.ceil(math.sqrt(size[0] * size[1] / max_work_pixels)))
