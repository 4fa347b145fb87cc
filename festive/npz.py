"""Blobs of numpy arrays with a JSON header (npz, compressed, never pickled): the one
layout of the vector blobs (festive.attribution.similar, festive.user_references)."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np


def pack(fmt: str, header: dict[str, Any], **arrays: np.ndarray) -> bytes:
    """The npz bytes of `arrays` plus `header` (with "format": fmt) as JSON."""
    text = json.dumps({**header, "format": fmt}, sort_keys=True).encode()
    buf = io.BytesIO()
    np.savez_compressed(buf, allow_pickle=False, header=np.frombuffer(text, np.uint8), **arrays)
    return buf.getvalue()


def unpack(data: bytes, fmt: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays) of a blob `pack` wrote; ValueError when it is not `fmt`."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        header = json.loads(z["header"].tobytes().decode())
        if not isinstance(header, dict) or header.get("format") != fmt:
            found = header.get("format") if isinstance(header, dict) else None
            raise ValueError(f"not a {fmt} blob (found {found!r})")
        return header, {name: z[name] for name in z.files if name != "header"}
