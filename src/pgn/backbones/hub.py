"""Network probes and download caches shared by the backbone factories.

Kept apart from the registry so the factories (timm, open_clip, torchvision) can import
it without an import cycle. Everything here is quick: an offline machine must fail in
milliseconds, never after a long HTTP timeout.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

_TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    """True when the user asked for no network (``PGN_OFFLINE`` or ``HF_HUB_OFFLINE``)."""
    return any(os.environ.get(var, "0").strip().lower() in _TRUE for var in ("PGN_OFFLINE", "HF_HUB_OFFLINE"))


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Can a TCP connection to ``host:port`` open within ``timeout`` seconds (and is the network allowed)?"""
    if offline():
        return False
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def hf_cached_file(repo_id: str, filenames: tuple[str, ...]) -> str | None:
    """The first of ``filenames`` already in the local Hugging Face cache for ``repo_id``, if any."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with timm
        return None
    for fname in filenames:
        hit = try_to_load_from_cache(repo_id, fname)
        if isinstance(hit, str):
            return hit
    return None


def torch_hub_checkpoint(url: str) -> Path | None:
    """The file ``torch.hub.load_state_dict_from_url(url)`` would reuse, if it is already downloaded."""
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return path if path.is_file() else None


def file_identity(path: str | os.PathLike) -> str:
    """A cheap identity for a weights file (resolved path, size, mtime): changes when the file does."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return f"file:{p}:{st.st_size}:{st.st_mtime_ns}"
