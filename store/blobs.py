"""Content-addressed blob directory: samples, unpacked children and lifted functions.

Paths are derived from sha256 digests only, never from user-supplied names, so a hostile
filename can never choose where bytes land. Writes go to a temporary file in the same
directory tree and are renamed into place, so a reader never sees a half-written blob.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20


class BlobTooLarge(Exception):
    """An incoming stream passed the configured size cap."""


def is_sha256(value: str) -> bool:
    return bool(SHA256_RE.match(value))


class _Incoming:
    """Bytes on their way into the store: hashed, counted and capped as they are written."""

    def __init__(self, out: BinaryIO, path: Path, max_bytes: int | None) -> None:
        self.out, self.path, self.max_bytes = out, path, max_bytes
        self.digest, self.size = hashlib.sha256(), 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise BlobTooLarge(f"larger than {self.max_bytes} bytes")
        self.digest.update(chunk)
        self.out.write(chunk)

    def sha256(self) -> str:
        return self.digest.hexdigest()


class BlobStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    # --- addressing -------------------------------------------------------------------
    def path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256 digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        return self.path(sha256).stat().st_size

    # --- writing ----------------------------------------------------------------------
    def _tempfile(self) -> tuple[BinaryIO, Path]:
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix="incoming-")
        return os.fdopen(fd, "wb"), Path(name)

    def _commit(self, tmp: Path, sha256: str) -> str:
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.chmod(tmp, 0o444)  # samples are data: never executable, never rewritten
            os.replace(tmp, final)
        return sha256

    def put_chunks(self, chunks: Iterable[bytes], max_bytes: int | None = None) -> tuple[str, int]:
        """Store a stream, hashing on the way; returns (sha256, size)."""
        with self._incoming(max_bytes) as incoming:
            for chunk in chunks:
                incoming.write(chunk)
        return self._commit(incoming.path, incoming.sha256()), incoming.size

    async def put_async_chunks(
        self, chunks: AsyncIterator[bytes], max_bytes: int | None = None
    ) -> tuple[str, int]:
        """Async twin of put_chunks for uploads arriving from the web server."""
        with self._incoming(max_bytes) as incoming:
            async for chunk in chunks:
                incoming.write(chunk)
        return self._commit(incoming.path, incoming.sha256()), incoming.size

    @contextlib.contextmanager
    def _incoming(self, max_bytes: int | None) -> Iterator[_Incoming]:
        """A temporary blob being written; removed again if writing it fails."""
        out, tmp = self._tempfile()
        incoming = _Incoming(out, tmp, max_bytes)
        try:
            with out:
                yield incoming
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_bytes(self, data: bytes) -> str:
        return self.put_chunks([data])[0]

    def put_file(self, source: str | os.PathLike[str]) -> tuple[str, int]:
        with open(source, "rb") as handle:
            return self.put_chunks(iter(lambda: handle.read(CHUNK), b""))

    def put_json(self, document: Any) -> str:
        """Gzipped JSON, deterministic so equal documents share one blob."""
        raw = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        return self.put_bytes(gzip.compress(raw, compresslevel=6, mtime=0))

    # --- reading ----------------------------------------------------------------------
    def open(self, sha256: str) -> BinaryIO:
        return open(self.path(sha256), "rb")

    def read_bytes(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def read_json(self, sha256: str) -> Any:
        return json.loads(gzip.decompress(self.read_bytes(sha256)))

    # --- derived results (cache of expensive work keyed by input + tool version) -------
    def _ref_path(self, kind: str, key: str) -> Path:
        if not re.match(r"^[a-z0-9][a-z0-9._-]*$", kind) or not is_sha256(key):
            raise ValueError(f"bad derived reference {kind!r}/{key!r}")
        return self.root / "derived" / kind / key[:2] / key

    def get_derived(self, kind: str, key: str) -> str | None:
        """The blob recorded for (kind, key), if it is still present."""
        ref = self._ref_path(kind, key)
        try:
            target = ref.read_text().strip()
        except FileNotFoundError:
            return None
        return target if is_sha256(target) and self.exists(target) else None

    def set_derived(self, kind: str, key: str, blob_sha256: str) -> None:
        ref = self._ref_path(kind, key)
        ref.parent.mkdir(parents=True, exist_ok=True)
        out, tmp = self._tempfile()
        with out:
            out.write(blob_sha256.encode())
        os.replace(tmp, ref)
