"""Reading images and masks of any common kind into uint8 arrays, with one-line errors.

Accepted: PNG, JPEG, BMP, TIFF; modes 1, L, P, RGB, RGBA, LA, I;16 / I (16-bit), F.
Images come back as HxWx3 uint8 (``mode="RGB"``) or HxW uint8 (``mode="L"``); masks as HxW bool.
"""

from __future__ import annotations

import warnings
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
        arr = np.asarray(im).astype(np.float64)
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
