"""The content-addressed blob store: samples, unpacked children, lifted functions, results.

One interface, two implementations chosen by URL (open_blobs): a local directory
(store/blobs_local.py, the default) and an S3-compatible object store
(store/blobs_s3.py, `s3://bucket/prefix`) that processes on several machines share.

Names are sha256 digests only, never user-supplied names, so a hostile filename can never
choose where bytes land. Incoming bytes are written to a local temporary file while they
are hashed, counted and capped, and only then published under their digest, so a reader
never sees a half-written blob. Blobs never change once written.
"""

from __future__ import annotations

import abc
import asyncio
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
KIND_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
CHUNK = 1 << 20


class BlobTooLarge(Exception):
    """An incoming stream passed the configured size cap."""


class BlobMissing(FileNotFoundError):
    """No blob with this digest in the store."""


def is_sha256(value: str) -> bool:
    return bool(SHA256_RE.match(value))


def check_sha256(value: str) -> str:
    if not is_sha256(value):
        raise ValueError(f"not a sha256 digest: {value!r}")
    return value


def check_derived(kind: str, key: str) -> None:
    if not KIND_RE.match(kind) or not is_sha256(key):
        raise ValueError(f"bad derived reference {kind!r}/{key!r}")


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


class BlobStore(abc.ABC):
    """What every implementation offers. `scratch` is a directory on this machine for
    temporary files (incoming blobs, lift work, local copies); nothing in it is shared."""

    scratch: Path

    # --- what an implementation provides ------------------------------------------------
    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the blobs live, for messages (a directory or an s3:// URL)."""

    @abc.abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abc.abstractmethod
    def size(self, sha256: str) -> int:
        """Size in bytes; BlobMissing when absent."""

    @abc.abstractmethod
    def read_bytes(self, sha256: str) -> bytes:
        """The whole blob; BlobMissing when absent."""

    @abc.abstractmethod
    def local_copy(self, sha256: str) -> contextlib.AbstractContextManager[Path]:
        """A read-only file on this machine holding the blob, for tools that need a path
        (archive readers, angr); valid until the block ends. BlobMissing when absent."""

    @abc.abstractmethod
    def _publish(self, tmp: Path, sha256: str) -> None:
        """Make a finished temporary file the blob `sha256` (consuming the file)."""

    @abc.abstractmethod
    def _read_ref(self, kind: str, key: str) -> str | None: ...

    @abc.abstractmethod
    def _write_ref(self, kind: str, key: str, value: str) -> None: ...

    # --- writing ----------------------------------------------------------------------
    def put_chunks(self, chunks: Iterable[bytes], max_bytes: int | None = None) -> tuple[str, int]:
        """Store a stream, hashing on the way; returns (sha256, size)."""
        with self._incoming(max_bytes) as incoming:
            for chunk in chunks:
                incoming.write(chunk)
        return self._commit(incoming), incoming.size

    async def put_async_chunks(
        self, chunks: AsyncIterator[bytes], max_bytes: int | None = None
    ) -> tuple[str, int]:
        """Async twin of put_chunks for uploads arriving from the web server (publishing,
        an upload for S3, runs in a thread)."""
        with self._incoming(max_bytes) as incoming:
            async for chunk in chunks:
                incoming.write(chunk)
        return await asyncio.to_thread(self._commit, incoming), incoming.size

    def put_bytes(self, data: bytes) -> str:
        return self.put_chunks([data])[0]

    def put_file(self, source: str | os.PathLike[str]) -> tuple[str, int]:
        with open(source, "rb") as handle:
            return self.put_chunks(iter(lambda: handle.read(CHUNK), b""))

    def put_json(self, document: Any) -> str:
        """Gzipped JSON, deterministic so equal documents share one blob."""
        raw = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        return self.put_bytes(gzip.compress(raw, compresslevel=6, mtime=0))

    @contextlib.contextmanager
    def _incoming(self, max_bytes: int | None) -> Iterator[_Incoming]:
        """A temporary blob being written; removed again if writing it fails."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.scratch, prefix="incoming-")
        out, tmp = os.fdopen(fd, "wb"), Path(name)
        incoming = _Incoming(out, tmp, max_bytes)
        try:
            with out:
                yield incoming
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _commit(self, incoming: _Incoming) -> str:
        sha256 = incoming.sha256()
        try:
            self._publish(incoming.path, sha256)
        finally:
            incoming.path.unlink(missing_ok=True)
        return sha256

    # --- reading ----------------------------------------------------------------------
    def read_json(self, sha256: str) -> Any:
        return json.loads(gzip.decompress(self.read_bytes(sha256)))

    @contextlib.asynccontextmanager
    async def local_copy_async(self, sha256: str) -> AsyncIterator[Path]:
        """local_copy for async code: the copy is made and removed in a thread (a
        download from S3 does not hold up the event loop)."""
        copy = self.local_copy(sha256)
        path = await asyncio.to_thread(copy.__enter__)
        try:
            yield path
        finally:
            await asyncio.to_thread(copy.__exit__, None, None, None)

    # --- derived results (cache of expensive work keyed by input + tool version) -------
    def get_derived(self, kind: str, key: str) -> str | None:
        """The blob recorded for (kind, key), if it is still present."""
        check_derived(kind, key)
        target = self._read_ref(kind, key)
        return target if target and is_sha256(target) and self.exists(target) else None

    def set_derived(self, kind: str, key: str, blob_sha256: str) -> None:
        check_derived(kind, key)
        self._write_ref(kind, key, check_sha256(blob_sha256))


def open_blobs(url: str, scratch: Path, s3_endpoint_url: str | None = None,
               s3_region: str | None = None) -> BlobStore:
    """The store a URL names: `s3://bucket[/prefix]` (credentials from the usual AWS
    variables), or a directory (a path or `file:///path`)."""
    if url.startswith("s3://"):
        from store.blobs_s3 import S3BlobStore

        return S3BlobStore(url, scratch, endpoint_url=s3_endpoint_url, region=s3_region)
    if "://" in url and not url.startswith("file://"):
        raise ValueError(f"unsupported blob store URL {url!r}: use s3://bucket/prefix or a path")
    from store.blobs_local import LocalBlobStore

    return LocalBlobStore(url.removeprefix("file://"))
