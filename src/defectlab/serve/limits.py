"""Upload guards for the HTTP service: body size (before the app sees a byte) and image decoding.

Every refusal is an ``UploadRefused(status, message)``; the app turns it into a JSON 4xx, never a 500.
"""

from __future__ import annotations

import io
import json
import warnings

from PIL import Image, UnidentifiedImageError

from defectlab.data.io import to_mode

# Formats a camera or a person uploads; Pillow's other decoders (EPS, PSD, ...) stay closed.
Image.init()  # register every plugin now, so the allow-list below is checked against what exists
UPLOAD_FORMATS = tuple(f for f in ("PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP") if f in Image.OPEN)


class UploadRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_upload(data: bytes, *, max_pixels: int, mode: str = "RGB") -> Image.Image:
    """Bytes -> PIL image in ``mode``; the pixel count is checked from the header, before decoding."""
    if not data:
        raise UploadRefused(400, "empty upload: send an image file in the multipart field 'file'")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
    except UnidentifiedImageError:
        raise UploadRefused(415, f"not an image: expected one of {', '.join(UPLOAD_FORMATS)}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadRefused(413, f"image has too many pixels ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - a decoder's failure is the upload's fault, never a 500
        raise UploadRefused(422, f"broken image header ({type(exc).__name__}: {exc})") from None
    pixels = im.width * im.height
    if pixels > max_pixels:
        raise UploadRefused(413, f"image is {im.width}x{im.height} = {pixels} pixels; the limit is {max_pixels}")
    if pixels == 0:
        raise UploadRefused(422, "image has no pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
        return to_mode(im, mode)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the upload's fault, not a 500
        msg = str(exc).strip() or type(exc).__name__
        raise UploadRefused(422, f"corrupt or truncated {im.format} image ({msg})") from None


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413, from Content-Length when the
    client sends it, else while reading; the app gets the buffered body (bounded by the limit)."""

    def __init__(self, app, max_bytes: int) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send, int(length))
            return
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await self._refuse(send, total)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = False

        async def replay():  # type: ignore[no-untyped-def]
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send, size: int) -> None:  # type: ignore[no-untyped-def]
        body = json.dumps({"detail": f"upload too large: {size} bytes or more; the limit is "
                                     f"{self.max_bytes} bytes ({self.max_bytes / 2**20:g} MiB)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
