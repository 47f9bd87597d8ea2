"""Operations for the HTTP service: request ids, one JSON log line per request, Prometheus metrics, the
model's identity on every response, and the offline API docs page.

* Every response carries ``X-Request-ID`` (the client's, when it sends one) and ``X-Defectlab-Model``.
* The log line (logger ``defectlab.serve.access``, level INFO) is one JSON object: ``ts``, ``request_id``,
  ``method``, ``path``, ``status``, ``latency_ms``, ``model``, and for inspections ``verdict`` and ``score``.
* ``Metrics`` keeps its own registry (several apps in one process do not collide).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

access_log = logging.getLogger("defectlab.serve.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # a client's id is echoed only when it is this plain

RequestHook = Callable[[dict[str, Any]], None]  # gets the log record of every finished request


class Metrics:
    """Requests, latencies, verdicts, queue depth and process memory, in Prometheus' text format."""

    def __init__(self, queue_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("defectlab_requests", "HTTP requests by path and status", ["path", "status"],
                                registry=r)
        self.latency = Histogram("defectlab_request_seconds", "Request latency (whole request), seconds",
                                 ["path"], registry=r,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.verdicts = Counter("defectlab_verdicts", "Inspection verdicts", ["verdict"], registry=r)
        self.queue = Gauge("defectlab_queue_depth", "Inference requests admitted and not yet answered",
                           registry=r)
        self.queue.set_function(queue_depth)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class RequestContext:
    """ASGI middleware (outermost): request id, model header, the access log line, metrics, request hooks.
    Endpoints add fields to the log record through ``request.state.log`` (a dict)."""

    def __init__(self, app, *, model: str, metrics: Metrics, hooks: list[RequestHook]) -> None:  # type: ignore[no-untyped-def]
        self.app, self.model, self.metrics, self.hooks = app, model, metrics, hooks

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        record: dict[str, Any] = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                                  "request_id": rid, "method": scope["method"], "path": scope["path"],
                                  "model": self.model}
        scope.setdefault("state", {})["log"] = record
        status = 500

        async def send_with_headers(message):  # type: ignore[no-untyped-def]
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [(b"x-request-id", rid.encode()), (b"x-defectlab-model", self.model.encode())]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - t0
            record.update(status=status, latency_ms=round(elapsed * 1000, 2))
            path = scope["path"] if scope["path"] in _KNOWN else "other"
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(elapsed)
            if "verdict" in record:
                self.metrics.verdicts.labels(record["verdict"]).inc()
            access_log.info(json.dumps(record, default=str))
            for hook in self.hooks:
                try:
                    hook(record)
                except Exception:  # noqa: BLE001 - a hook must never break serving
                    access_log.exception("request hook %r failed", hook)


_KNOWN = {"/", "/inspect", "/inspect/heatmap", "/health", "/ready", "/model", "/metrics", "/docs",
          "/openapi.json"}


def public_info(info: Any) -> Any:
    """The model description without the server's file-system layout: absolute paths become their name."""
    if isinstance(info, dict):
        return {k: public_info(v) for k, v in info.items()}
    if isinstance(info, (list, tuple)):
        return [public_info(v) for v in info]
    if isinstance(info, str) and (info.startswith(("/", "~", "\\\\")) or re.match(r"^[A-Za-z]:[\\/]", info)):
        return PurePath(info.replace("\\", "/")).name
    return info


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>defectlab API</title>
<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:1.5rem auto;padding:0 1rem;color:#1d232a}
h2{font-size:1.05rem;margin:1.2rem 0 .2rem}code{background:#eef1f4;padding:0 .25rem;border-radius:3px}
.m{font-weight:700;display:inline-block;width:4rem}p{margin:.2rem 0 .2rem 4rem;color:#444}</style></head>
<body><h1>defectlab inspection service: API</h1>
<p style="margin-left:0">The machine-readable description is <a href="openapi.json">openapi.json</a>
(OpenAPI 3; any OpenAPI tool reads it). This page lists it without loading anything from the internet.</p>
<div id="paths">loading openapi.json...</div>
<script>
"use strict";
fetch("openapi.json").then((r) => r.json()).then((api) => {
  const out = document.getElementById("paths");
  out.textContent = "";
  for (const [path, ops] of Object.entries(api.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const h = document.createElement("h2");
      const m = document.createElement("span"); m.className = "m"; m.textContent = method.toUpperCase();
      const c = document.createElement("code"); c.textContent = path;
      h.append(m, c); out.append(h);
      const p = document.createElement("p");
      const codes = Object.keys(op.responses || {}).join(", ");
      p.textContent = (op.summary || "") + (op.description ? ": " + op.description : "") +
                      (codes ? "  [responses " + codes + "]" : "");
      out.append(p);
    }
  }
}).catch((e) => { document.getElementById("paths").textContent = "cannot read openapi.json: " + e; });
</script></body></html>
"""
