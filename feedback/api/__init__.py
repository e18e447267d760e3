"""Greenroom's trainer HTTP API (FastAPI): corrections, leases and stats behind bearer tokens.

Build it with :func:`create_app` and serve it with uvicorn (``greenroom api``).
"""

from __future__ import annotations

from feedback.api.app import create_app

__all__ = ["create_app"]
