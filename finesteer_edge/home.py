"""Where finesteer-edge keeps pulled models: ``$FINESTEER_EDGE_HOME``, else the XDG cache."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of the model cache. Not created here: callers that write create what they need."""
    explicit = os.environ.get("FINESTEER_EDGE_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "finesteer-edge"


def models_dir() -> Path:
    return cache_dir() / "models"
