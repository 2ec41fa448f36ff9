"""Where fobbench caches generated and decoded data sets."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$FOBBENCH_CACHE``, else ``$XDG_CACHE_HOME/fobbench``, else ``~/.cache/fobbench``."""
    if os.environ.get("FOBBENCH_CACHE"):
        return Path(os.environ["FOBBENCH_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "fobbench"
    return Path.home() / ".cache" / "fobbench"
