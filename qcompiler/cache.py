"""Where qcompiler caches derived files (example exports, calibration statistics).

``$QCOMPILER_CACHE`` if set, else ``$XDG_CACHE_HOME/qcompiler``, else ``~/.cache/qcompiler``.
Never inside the repository: models and data stay out of git.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    root = os.environ.get("QCOMPILER_CACHE")
    if root:
        return Path(root)
    user_cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(user_cache) / "qcompiler"
