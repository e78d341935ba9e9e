"""Where fasttn keeps what it computes once per user: contraction paths, compiled kernels.

``$FASTTN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fasttn``, else ``~/.cache/fasttn``: never
inside the installed package, so that reinstalling fasttn leaves nothing behind in
``site-packages``.
"""
from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """fasttn's per-user cache folder (not created here)."""
    root = os.environ.get("FASTTN_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "fasttn"
