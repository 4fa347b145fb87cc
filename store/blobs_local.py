"""The blob store as a local directory: `sha256/ab/cd/<digest>`, derived results as small
files under `derived/`, temporary files under `tmp/`. Shared by processes of one
machine (or over a network file system every process mounts)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from store.blobs import BlobMissing, BlobStore, check_sha256


class LocalBlobStore(BlobStore):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.scratch = self.root / "tmp"
        self.scratch.mkdir(parents=True, exist_ok=True)

    @property
    def location(self) -> str:
        return str(self.root)

    def path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / "sha256" / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError as exc:
            raise BlobMissing(sha256) from exc

    def read_bytes(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError as exc:
            raise BlobMissing(sha256) from exc

    @contextlib.contextmanager
    def local_copy(self, sha256: str) -> Iterator[Path]:
        path = self.path(sha256)
        if not path.is_file():
            raise BlobMissing(sha256)
        yield path  # the blob itself: read-only, never rewritten

    def _publish(self, tmp: Path, sha256: str) -> None:
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        if not final.exists():
            os.chmod(tmp, 0o444)  # samples are data: never executable, never rewritten
            os.replace(tmp, final)

    def _ref_path(self, kind: str, key: str) -> Path:
        return self.root / "derived" / kind / key[:2] / key

    def _read_ref(self, kind: str, key: str) -> str | None:
        try:
            return self._ref_path(kind, key).read_text().strip()
        except FileNotFoundError:
            return None

    def _write_ref(self, kind: str, key: str, value: str) -> None:
        ref = self._ref_path(kind, key)
        ref.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.scratch, prefix="ref-")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(value)
            os.replace(name, ref)
        except BaseException:  # disk full, say: leave no half-written file behind
            Path(name).unlink(missing_ok=True)
            raise
