"""The HTTP API: ``create_app(store)`` returns a FastAPI app; ``semindex serve`` runs it with uvicorn."""

from __future__ import annotations

from .app import DEFAULT_MAX_BODY_BYTES, create_app

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]
