"""Upload guards for the HTTP service: body size (before the app sees a byte) and image decoding.

Every refusal is an ``UploadRefused(status, message)``; the app turns it into a JSON 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from PIL import Image

from defectlab.data.io import Decoded, Fit, ImageRefused, decode_for_model

# Formats a camera or a person uploads; Pillow's other decoders (EPS, PSD, ...) stay closed.
Image.init()  # register every plugin now, so the allow-list below is checked against what exists
UPLOAD_FORMATS = tuple(f for f in ("PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP") if f in Image.OPEN)


class UploadRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_upload(data: bytes, *, max_pixels: int, mode: str = "RGB", fit: Fit | None = None,
                  max_work_pixels: int | None = None) -> Decoded:
    """Bytes -> ``Decoded`` (``defectlab.data.io.decode_for_model``): the pixel count is checked from the
    header, the model's limits through ``fit``, large images reduced on load. Refusals are UploadRefused."""
    if not data:
        raise UploadRefused(400, "empty upload: send an image file in the multipart field 'file'")
    try:
        return decode_for_model(data, fit=fit, mode=mode, max_pixels=max_pixels,
                                max_work_pixels=max_work_pixels, formats=UPLOAD_FORMATS)
    except ImageRefused as exc:
        message = exc.problem
        if exc.status == 415:
            message = f"not an image: expected one of {', '.join(UPLOAD_FORMATS)}"
        raise UploadRefused(exc.status, message) from None


async def _send_json(send, status: int, detail: str, headers: list | None = None) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413, from Content-Length when the
    client sends it, else while reading; a body that stalls for ``timeout_s`` between chunks gets 408 (a
    stalled upload holds no worker and cannot block shutdown). The app gets the buffered body."""

    def __init__(self, app, max_bytes: int, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

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
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                await _send_json(send, 408, f"upload stalled: no data for {self.timeout_s:g} s")
                return
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
        await _send_json(send, 413, f"upload too large: {size} bytes or more; the limit is "
                                    f"{self.max_bytes} bytes ({self.max_bytes / 2**20:g} MiB)")


@dataclass
class QueueGate:
    limit: int  # requests admitted at once
    depth: int = 0  # admitted now (read by the metrics)


class Admission:
    """ASGI middleware: at most ``gate.limit`` requests to the inference paths at once (the one being scored
    and those waiting, bodies included); the next gets 503 with Retry-After before its body is read."""

    def __init__(self, app, gate: QueueGate, paths: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
        self.app, self.gate, self.paths = app, gate, paths

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        gate = self.gate
        if gate.depth >= gate.limit:
            await _send_json(send, 503, f"busy: {gate.depth} requests queued (the limit is {gate.limit}); "
                                        "retry shortly", [(b"retry-after", b"1")])
            return
        gate.depth += 1
        try:
            await self.app(scope, receive, send)
        finally:
            gate.depth -= 1
