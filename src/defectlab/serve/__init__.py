"""HTTP inspection service: FastAPI app, upload limits and the single-page web UI (page.html)."""

from defectlab.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
