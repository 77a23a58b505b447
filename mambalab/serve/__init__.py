"""Serving: `Engine` (model + tokenizer + prefix cache + continuous-batching `Scheduler`) and an
OpenAI-compatible HTTP server on FastAPI (`app.create_app`, `server.serve`).

The HTTP part needs the optional extra `pip install -e ".[serve]"` (fastapi, uvicorn, pydantic); the engine
does not (`mambalab generate` uses it without them).
"""

from __future__ import annotations

import importlib.util

from mambalab.errors import MambalabError

SERVE_MODULES = ("fastapi", "uvicorn", "pydantic")


class ServeDependencyError(MambalabError, ImportError):
    """The optional serving dependencies are not installed."""


def require_serve_dependencies() -> None:
    """Raise ServeDependencyError, saying how to install them, when fastapi/uvicorn/pydantic are missing."""
    missing = [name for name in SERVE_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ServeDependencyError(
            f"mambalab serve needs {', '.join(missing)}: install them with pip install -e \".[serve]\""
            " (or pip install fastapi uvicorn pydantic)"
        )
