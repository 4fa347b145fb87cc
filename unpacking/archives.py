"""Read the members of one archive (zip, tar, gzip/bz2/xz, 7z) while metering every byte.

Archives here are hostile by assumption. Nothing in this module writes to a path taken
from an archive: members are handed to a visitor as streams, every decompressed byte is
charged to a Meter before the visitor sees it, and symlinks, hard links and device nodes
are reported instead of followed. Declared sizes are never trusted.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import struct
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import py7zr
import py7zr.exceptions
import py7zr.helpers
import py7zr.io

from unpacking.formats import BadSample, detect_archive

CHUNK = 1 << 16
RATIO_FLOOR = 1 << 20  # below 1 MiB of output the compression ratio is not worth judging
TAR_HEADER_WINDOW = 1 << 20  # tarfile buffers pax/GNU long-name headers whole in memory
SNIFF_BYTES = 1024
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
MAX_ZIP_DIRECTORY = 8 << 20  # ~150,000 entries, far beyond max_entries anyway

__all__ = [
    "ArchiveLimit",
    "BadSample",
    "Budget",
    "CorruptArchive",
    "EntryLimit",
    "LimitReached",
    "Member",
    "Meter",
    "StopUnpacking",
    "TimeLimit",
    "detect_archive",
    "is_traversal",
    "describe",
    "read_archive",
    "sanitize_name",
]


# --- limits ------------------------------------------------------------------------------
class LimitReached(Exception):
    """A cap was hit; the message says which one."""


class StopUnpacking(LimitReached):
    """A sample-wide cap (total bytes, entries): stop everything, keep what was found."""


class ArchiveLimit(LimitReached):
    """This archive produces too much for its size: stop reading it."""


class TimeLimit(ArchiveLimit):
    """This archive took longer than its time allowance (UnpackLimits.archive_seconds,
    or one external tool's): stop reading it. Unlike the other caps this depends on how
    busy the machine was, so the report says so (UnpackReport.time_limited) and such an
    unpack is not kept for reuse (activities/unpack.py)."""


class EntryLimit(LimitReached):
    """This member is too large: skip it, carry on with the archive."""


class CorruptArchive(Exception):
    """The archive cannot be read (any further)."""


class Budget:
    """Sample-wide counters: every decompressed byte and every archive member."""

    def __init__(self, max_total_bytes: int, max_entries: int) -> None:
        self.max_total_bytes, self.max_entries = max_total_bytes, max_entries
        self.bytes = 0
        self.entries = 0

    def charge(self, count: int) -> None:
        self.bytes += count
        if self.bytes > self.max_total_bytes:
            raise StopUnpacking(
                f"total decompressed size limit reached ({self.max_total_bytes} bytes)"
            )

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise StopUnpacking(f"too many archive entries (limit {self.max_entries})")


class Meter:
    """Per-archive counters: output must stay within max_ratio times the archive's size,
    and readers that take time of their own (external tools, decryption) stop at
    `deadline`, `seconds` after the archive was opened."""

    def __init__(self, budget: Budget, compressed_size: int, max_ratio: float,
                 seconds: float = float("inf")) -> None:
        self.budget = budget
        self.max_ratio = max_ratio
        self.compressed_size = compressed_size
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.allowance = max(int(max_ratio * compressed_size), RATIO_FLOOR)
        self.produced = 0
        self.entries = 0

    def charge(self, count: int) -> None:
        self.budget.charge(count)
        self.produced += count
        if self.produced > self.allowance:
            raise ArchiveLimit(
                f"compression ratio above {self.max_ratio:g} (more than {self.produced} bytes "
                f"from a {self.compressed_size}-byte archive): possible decompression bomb"
            )

    def entry(self) -> None:
        self.budget.entry()
        self.entries += 1


class Readable(Protocol):
    """What Metered reads from: a zip member, a decompressor, libarchive's entry data."""

    def read(self, size: int = -1, /) -> bytes: ...


class Metered(io.RawIOBase):
    """Read-only wrapper that charges the meter for every byte it returns.

    `prefix` is replayed first (bytes already peeked); `entry_allowance` caps one member's
    output relative to its own compressed size (zip); `window` caps the bytes read until
    reset (tar headers).
    """

    def __init__(
        self,
        raw: Readable,
        meter: Meter,
        prefix: bytes = b"",
        entry_allowance: int | None = None,
    ) -> None:
        super().__init__()
        self.raw, self.meter, self.prefix = raw, meter, prefix
        self.entry_allowance = entry_allowance
        self.window: int | None = None
        self.produced = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK  # never slurp: callers loop until b""
        if self.prefix:
            data, self.prefix = self.prefix[:size], self.prefix[size:]
            return data  # already charged when it was peeked
        data = self.raw.read(min(size, CHUNK * 4))
        self.produced += len(data)
        if self.window is not None:
            self.window -= len(data)
            if self.window < 0:
                raise ArchiveLimit(f"archive header larger than {TAR_HEADER_WINDOW} bytes")
        if self.entry_allowance is not None and self.produced > self.entry_allowance:
            raise EntryLimit(
                f"compression ratio above {self.meter.max_ratio:g}: possible decompression bomb"
            )
        self.meter.charge(len(data))
        return data

    def peek_head(self, size: int = SNIFF_BYTES) -> bytes:
        """Read up to `size` bytes and push them back so the next read sees them again."""
        head = read_up_to(self, size)
        self.prefix = head + self.prefix
        return head


# --- members -------------------------------------------------------------------------------
@dataclass
class Member:
    """One archive entry. Exactly one of `stream` (a regular file) or `problem` is set,
    except for directories, which have neither."""

    name: str
    stream: BinaryIO | None = None
    problem: str | None = None


Visitor = Callable[[Member], None]


def sanitize_name(raw: str) -> str:
    """A display path that is relative, without '..', '.', backslashes or control chars."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in raw.replace("\\", "/"))
    parts = [part for part in cleaned.split("/") if part not in ("", ".", "..")]
    if parts and len(parts[0]) == 2 and parts[0][1] == ":":  # Windows drive letter
        parts = parts[1:]
    name = "/".join(part[:255] for part in parts)[:1024]
    return name or "unnamed"


def is_traversal(raw: str) -> bool:
    cleaned = raw.replace("\\", "/")
    parts = cleaned.split("/")
    return cleaned.startswith("/") or ".." in parts or (len(cleaned) > 1 and cleaned[1] == ":")


def describe(head: bytes) -> str:
    """A short human description of a non-executable, non-archive file."""
    if not head:
        return "empty file"
    if head.startswith(b"%PDF"):
        return "PDF document"
    if head.startswith(b"#!"):
        return (
            "script ("
            + head[: head.find(b"\n") if b"\n" in head else 40][:40].decode("ascii", "replace")
            + ")"
        )
    if head[:4] == b"\xca\xfe\xba\xbe":
        return "Java class file or invalid Mach-O universal header"
    text: str | None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the end of the head.
        try:
            text = head[:-3].decode("utf-8") if len(head) > 3 else None
        except UnicodeDecodeError:
            text = None
    if text is not None and all(ch.isprintable() or ch in "\t\r\n\f" for ch in text):
        return "ASCII text" if text.isascii() else "UTF-8 text"
    return "unrecognised binary data"


def read_up_to(stream: Any, size: int) -> bytes:
    """Up to `size` bytes; short reads from decompressors are repeated until EOF."""
    head = b""
    while len(head) < size:
        data = stream.read(size - len(head))
        if not data:
            break
        head += data
    return head


# --- readers -------------------------------------------------------------------------------
def read_archive(
    kind: str,
    path: Path,
    meter: Meter,
    visit: Visitor,
    passwords: tuple[str, ...],
    spool_dir: Path,
    max_member_bytes: int,
) -> str:
    """Visit every member of the archive at `path`; returns the archive's type name
    (e.g. "tar.gz"). Raises CorruptArchive, ArchiveLimit or StopUnpacking."""
    if kind == "zip":
        _read_zip(path, meter, visit, passwords)
        return "zip"
    if kind == "7z":
        _read_7z(path, meter, visit, passwords, spool_dir, max_member_bytes)
        return "7z"
    if kind == "tar":
        with open(path, "rb") as handle:
            _read_tar(Metered(handle, meter), meter, visit)
        return "tar"
    return _read_compressed(kind, path, meter, visit)


_CORRUPTION = (
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    struct.error,
    NotImplementedError,
    RuntimeError,
)


def _zip_directory_size(path: Path) -> int:
    """The central directory size the end record announces (0 if there is none).

    zipfile reads the whole directory and builds a ZipInfo per entry (~10x the bytes in
    memory) before the first entry can be looked at, so it is checked first.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(size - min(size, 22 + 0xFFFF))
        tail = handle.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return 0
        directory = struct.unpack("<I", tail[at + 12 : at + 16])[0]
        if directory == 0xFFFFFFFF and at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":
            record_at = struct.unpack("<Q", tail[at - 12 : at - 4])[0]
            if record_at >= size:  # zipfile reports the broken locator itself
                return 0
            handle.seek(record_at)
            record = handle.read(56)
            if record[:4] == b"PK\x06\x06" and len(record) == 56:
                directory = struct.unpack("<Q", record[40:48])[0]
    return directory


def _read_zip(path: Path, meter: Meter, visit: Visitor, passwords: tuple[str, ...]) -> None:
    directory = _zip_directory_size(path)
    if directory > MAX_ZIP_DIRECTORY:
        raise ArchiveLimit(
            f"zip central directory of {directory} bytes is too large (limit {MAX_ZIP_DIRECTORY})"
        )
    try:
        archive = zipfile.ZipFile(path)
    except _CORRUPTION as exc:
        raise CorruptArchive(f"corrupt zip archive: {exc}") from exc
    with archive:
        order = list(passwords)
        for info in archive.infolist():
            meter.entry()
            name, mode = info.filename, info.external_attr >> 16
            if info.is_dir():
                visit(Member(name))
            elif stat.S_ISLNK(mode):
                visit(Member(name, problem="symlink inside zip (not followed)"))
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                visit(Member(name, problem="special file inside zip (skipped)"))
            elif info.compress_type == 99:
                visit(Member(name, problem="AES-encrypted zip entry: unsupported"))
            elif info.compress_type not in ZIP_METHODS:
                method = f"zip compression method {info.compress_type}"
                visit(Member(name, problem=f"unsupported {method}"))
            elif info.flag_bits & 0x1:
                _visit_encrypted_zip_entry(archive, info, meter, visit, order)
            else:
                try:
                    _visit_zip_entry(archive, info, meter, visit, None)
                except _CORRUPTION as exc:
                    visit(Member(name, problem=f"corrupt zip entry: {exc}"))


def _visit_zip_entry(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    meter: Meter,
    visit: Visitor,
    password: str | None,
) -> None:
    allowance = max(int(meter.max_ratio * info.compress_size), RATIO_FLOOR)
    pwd = password.encode() if password is not None else None
    with archive.open(info, pwd=pwd) as raw:
        stream = Metered(raw, meter, entry_allowance=allowance)
        visit(Member(info.filename, stream=stream))  # type: ignore[arg-type]


def _visit_encrypted_zip_entry(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    meter: Meter,
    visit: Visitor,
    order: list[str],
) -> None:
    """Try each password, the last one that worked first. ZipCrypto's check byte lets a
    wrong password through 1 time in 256; the CRC at the end of the entry catches it only
    when the visitor reads the entry to the end."""
    for password in list(order):
        try:
            _visit_zip_entry(archive, info, meter, visit, password)
        except _CORRUPTION:
            continue
        order.remove(password)
        order.insert(0, password)
        return
    visit(
        Member(
            info.filename,
            problem=f"bad password: encrypted, none of the {len(order)} known passwords worked",
        )
    )


def _read_tar(stream: Metered, meter: Meter, visit: Visitor, label: str = "tar") -> None:
    """Sequential ("r|") reading: nothing is seeked, so every byte passes the meter."""
    try:
        stream.window = TAR_HEADER_WINDOW
        archive = tarfile.open(fileobj=stream, mode="r|")  # type: ignore[arg-type]
        with archive:
            while True:
                stream.window = TAR_HEADER_WINDOW
                info = archive.next()
                stream.window = None
                if info is None:
                    return
                meter.entry()
                _visit_tar_member(archive, info, visit)
    except _CORRUPTION as exc:
        done = f" after {meter.entries} entries" if meter.entries else ""
        raise CorruptArchive(f"corrupt {label} archive{done}: {exc}") from exc


def _visit_tar_member(archive: tarfile.TarFile, info: tarfile.TarInfo, visit: Visitor) -> None:
    name = info.name
    if info.isdir():
        visit(Member(name))
    elif info.issym():
        visit(Member(name, problem=f"symlink to {info.linkname!r} (not followed)"))
    elif info.islnk():
        visit(Member(name, problem=f"hard link to {info.linkname!r} (not followed)"))
    elif info.ischr() or info.isblk():
        visit(Member(name, problem="device node (skipped)"))
    elif info.isfifo():
        visit(Member(name, problem="FIFO (skipped)"))
    elif info.isreg():
        member = archive.extractfile(info)
        if member is None:
            visit(Member(name, problem="unreadable tar entry"))
            return
        visit(Member(name, stream=member))  # type: ignore[arg-type]
        while member.read(CHUNK):  # drain here so the next header read stays small
            pass
    else:
        visit(Member(name, problem=f"unsupported tar entry type {info.type!r}"))


def _gzip_name(path: Path) -> str | None:
    """The original file name stored in a gzip header (FNAME), if any."""
    with open(path, "rb") as handle:
        header = handle.read(10)
        if len(header) < 10 or not header[3] & 0x08:
            return None
        if header[3] & 0x04:  # FEXTRA precedes FNAME
            extra = handle.read(2)
            if len(extra) < 2:
                return None
            handle.seek(struct.unpack("<H", extra)[0], os.SEEK_CUR)
        raw = handle.read(1024).split(b"\0", 1)[0]
    return raw.decode("latin-1") or None


def _read_compressed(kind: str, path: Path, meter: Meter, visit: Visitor) -> str:
    """A gzip/bzip2/xz stream: either a compressed tar or a single compressed file."""
    openers: dict[str, Callable[..., Any]] = {  # each opens a binary stream with "rb"
        "gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}
    opener = openers[kind]
    suffix = {"gzip": "gz", "bzip2": "bz2", "xz": "xz"}[kind]
    try:
        with opener(path, "rb") as raw:
            stream = Metered(raw, meter)
            head = stream.peek_head(SNIFF_BYTES)
            if detect_archive(head) == "tar":
                _read_tar(stream, meter, visit, label=f"tar.{suffix}")
                return f"tar.{suffix}"
            meter.entry()
            name = (_gzip_name(path) if kind == "gzip" else None) or ""  # "": caller names it
            visit(Member(name, stream=stream))  # type: ignore[arg-type]
            return kind
    except _CORRUPTION as exc:
        raise CorruptArchive(f"corrupt {kind} stream: {exc}") from exc


# --- 7z -----------------------------------------------------------------------------------
class _Spool(py7zr.io.Py7zIO):
    """Receives one 7z member from py7zr into a capped temporary file, then visits it."""

    def __init__(self, owner: _SpoolFactory, name: str) -> None:
        self.owner, self.name = owner, name
        fd, spool = tempfile.mkstemp(dir=owner.spool_dir, prefix="7z-member-")
        self.path = Path(spool)
        self.handle = os.fdopen(fd, "w+b")
        self.written = 0
        self.too_large = False

    def write(self, data: bytes | bytearray) -> int:
        self.owner.meter.charge(len(data))
        if self.written + len(data) > self.owner.max_member_bytes:
            self.too_large = True  # keep decompressing (metered) but stop storing
        else:
            self.handle.write(data)
        self.written += len(data)
        return len(data)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def flush(self) -> None:
        pass

    def size(self) -> int:
        return self.written

    def close(self) -> None:
        """py7zr calls this once the member decompressed and passed its CRC check."""
        try:
            self.owner.completed += 1
            self.owner.meter.entry()
            if self.too_large:
                problem = f"too large (over {self.owner.max_member_bytes} bytes)"
                self.owner.visit(Member(self.name, problem=problem))
                return
            self.handle.seek(0)
            self.owner.visit(Member(self.name, stream=self.handle))
        finally:
            self.discard()

    def discard(self) -> None:
        self.handle.close()
        self.path.unlink(missing_ok=True)


class _SpoolFactory(py7zr.io.WriterFactory):
    def __init__(
        self, meter: Meter, visit: Visitor, spool_dir: Path, max_member_bytes: int,
        names: dict[str, str],
    ) -> None:  # fmt: skip
        self.meter, self.visit, self.spool_dir = meter, visit, spool_dir
        self.max_member_bytes = max_member_bytes
        self.names = names  # py7zr's sanitised output name -> name stored in the archive
        self.completed = 0
        self.open: list[_Spool] = []

    def create(self, filename: str) -> py7zr.io.Py7zIO:
        spool = _Spool(self, self.names.get(filename, filename))
        self.open.append(spool)
        return spool

    def cleanup(self) -> None:
        for spool in self.open:
            spool.discard()


def _open_7z(handle: BinaryIO, passwords: tuple[str, ...]) -> tuple[py7zr.SevenZipFile, str | None]:
    """Open the archive; an encrypted header needs the password before it can be listed."""
    try:
        return py7zr.SevenZipFile(handle, password=None), None
    except py7zr.exceptions.PasswordRequired:
        pass
    except LimitReached:
        raise
    except Exception as exc:  # py7zr raises many types for a broken file
        raise CorruptArchive(f"corrupt 7z archive: {exc}") from exc
    for password in passwords:
        handle.seek(0)
        try:
            return py7zr.SevenZipFile(handle, password=password), password
        except LimitReached:
            raise
        except Exception:
            continue
    raise CorruptArchive(
        f"bad password: 7z archive with encrypted header, none of the {len(passwords)} "
        "known passwords worked"
    )


def _read_7z(
    path: Path,
    meter: Meter,
    visit: Visitor,
    passwords: tuple[str, ...],
    spool_dir: Path,
    max_member_bytes: int,
) -> None:
    with open(path, "rb") as handle:  # a file object keeps py7zr single-threaded
        archive, header_password = _open_7z(handle, passwords)
        with archive:
            encrypted = archive.needs_password()
            targets: dict[str, str] = {}
            for info in archive.list():
                if info.is_directory:
                    meter.entry()
                    visit(Member(info.filename))
                    continue
                if info.is_symlink:
                    meter.entry()
                    visit(Member(info.filename, problem="symlink inside 7z (not followed)"))
                    continue
                try:
                    key = py7zr.helpers.get_sanitized_output_path(info.filename, None).as_posix()
                except Exception:
                    meter.entry()
                    visit(Member(info.filename, problem="path traversal name: not extracted"))
                    continue
                targets[key] = info.filename
        if not targets:
            return
        candidates: list[str | None]
        if header_password is not None:
            candidates = [header_password]
        elif encrypted:
            candidates = list(passwords)
        else:
            candidates = [None]
        for password in candidates:
            handle.seek(0)
            factory = _SpoolFactory(meter, visit, spool_dir, max_member_bytes, targets)
            try:
                with py7zr.SevenZipFile(handle, password=password) as archive:
                    archive.extract(targets=list(targets.values()), factory=factory)
                return
            except LimitReached:
                raise
            except py7zr.exceptions.UnsupportedCompressionMethodError as exc:
                raise CorruptArchive(f"unsupported 7z compression method: {exc}") from exc
            except Exception as exc:  # wrong passwords surface as any error type
                if encrypted and factory.completed == 0:
                    continue
                done = f" after {factory.completed} entries" if factory.completed else ""
                raise CorruptArchive(f"corrupt 7z archive{done}: {exc}") from exc
            finally:
                factory.cleanup()
        raise CorruptArchive(
            f"bad password: encrypted 7z archive, none of the {len(candidates)} known "
            "passwords worked"
        )
