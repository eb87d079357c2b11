"""Where pgn keeps converted weights and caches (``$PGN_HOME``, default ``~/.cache/pgn``)."""
from __future__ import annotations

import os
from pathlib import Path


def pgn_home() -> Path:
    """The cache directory; created on first use."""
    home = Path(os.environ.get("PGN_HOME", Path.home() / ".cache" / "pgn")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
