"""Read RAR, CAB, ISO 9660, cpio and ar (libarchive) and OLE/MSI (olefile) containers.

The same rules as unpacking.archives: members reach the visitor as streams whose every
byte is charged to the Meter, links and device nodes are reported instead of followed,
and nothing is written to a path taken from the container. libarchive is opened with
exactly one format family and no decompression filters, so it never runs an external
program and never guesses at a format the magic bytes did not name.

libarchive (3.6/3.7) cannot decrypt RAR. A RAR 4 archive with encrypted entries is
decrypted here with the password list (unpacking.rar4_crypt) and the copy read by
libarchive; any other encrypted RAR (RAR 5, encrypted headers, or a RAR 4 none of the
passwords decrypts) is read by unar with the password list (unpacking.rar_unar); where
unar is not installed, the encrypted entries are reported as such, naming that limit.
"""

from __future__ import annotations

import ctypes
import io
import os
import struct
import tempfile
from pathlib import Path

import libarchive.ffi as ffi
import olefile
from libarchive.exception import ArchiveError

from unpacking.archives import (
    CHUNK,
    Budget,
    CorruptArchive,
    LimitReached,
    Member,
    Meter,
    Metered,
    Visitor,
)
from unpacking.formats import RAR5_MAGIC
from unpacking.rar4_crypt import RAR4_MAGIC, decrypted_copy
from unpacking.rar_unar import RarLock, read_encrypted_rar, unar_tools

__all__ = ["CONTAINER_KINDS", "read_container"]

# kind -> the libarchive read formats enabled for it
LIBARCHIVE_FORMATS: dict[str, tuple[str, ...]] = {
    "rar": ("rar", "rar5"),
    "cab": ("cab",),
    "iso9660": ("iso9660",),
    "cpio": ("cpio",),
    "ar": ("ar",),
}
CONTAINER_KINDS = frozenset(LIBARCHIVE_FORMATS) | {"ole"}
MSI_CLSID = "000C1084-0000-0000-C000-000000000046"
MSI_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._"

_ARCHIVE_OK, _ARCHIVE_EOF, _ARCHIVE_WARN = 0, 1, -20
# A handle of our own: libarchive-c's function objects carry an errcheck that raises on
# any negative status, these return the status as it is.
_lib = ctypes.CDLL(ffi.libarchive_path)
_lib.archive_entry_is_encrypted.argtypes = [ctypes.c_void_p]
_lib.archive_entry_is_encrypted.restype = ctypes.c_int
_lib.archive_entry_pathname.argtypes = [ctypes.c_void_p]
_lib.archive_entry_pathname.restype = ctypes.c_char_p
_lib.archive_entry_symlink.argtypes = [ctypes.c_void_p]
_lib.archive_entry_symlink.restype = ctypes.c_char_p
_lib.archive_entry_hardlink.argtypes = [ctypes.c_void_p]
_lib.archive_entry_hardlink.restype = ctypes.c_char_p
_lib.archive_entry_filetype.argtypes = [ctypes.c_void_p]
_lib.archive_entry_filetype.restype = ctypes.c_uint
_lib.archive_read_next_header2.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_lib.archive_read_next_header2.restype = ctypes.c_int
_lib.archive_read_data.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
_lib.archive_read_data.restype = ctypes.c_ssize_t
_lib.archive_error_string.argtypes = [ctypes.c_void_p]
_lib.archive_error_string.restype = ctypes.c_char_p
_lib.archive_format_name.argtypes = [ctypes.c_void_p]
_lib.archive_format_name.restype = ctypes.c_char_p

S_IFMT, S_IFREG, S_IFDIR, S_IFLNK = 0o170000, 0o100000, 0o040000, 0o120000


def read_container(
    kind: str,
    path: Path,
    meter: Meter,
    visit: Visitor,
    passwords: tuple[str, ...],
    spool_dir: Path,
    max_member_bytes: int,
) -> str:
    """Visit every member of the container at `path` (the signature of
    archives.read_archive); returns its type name ("rar5", "cab", "msi", ...).
    Raises CorruptArchive, ArchiveLimit or StopUnpacking."""
    if kind == "ole":
        return _read_ole(path, meter, visit)
    if kind in LIBARCHIVE_FORMATS:
        return _read_libarchive(kind, path, meter, visit, passwords, spool_dir, max_member_bytes)
    raise ValueError(f"not a container kind: {kind!r}")


# --- libarchive ------------------------------------------------------------------------------
def _error(archive_p: int) -> str:
    raw = _lib.archive_error_string(archive_p)
    return raw.decode("utf-8", "replace") if raw else "unexpected end or malformed header"


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "surrogateescape") if raw else ""


class _EntryData(io.RawIOBase):
    """The current entry's data, straight from archive_read_data (not yet metered)."""

    def __init__(self, archive_p: int, label: str) -> None:
        super().__init__()
        self.archive_p, self.label = archive_p, label
        self.buffer = ctypes.create_string_buffer(CHUNK)

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        size = CHUNK if size is None or size < 0 else min(size, CHUNK)
        count = _lib.archive_read_data(self.archive_p, self.buffer, size)
        if count < 0:
            raise _DataError(_error(self.archive_p))
        return self.buffer.raw[:count]


class _DataError(Exception):
    """archive_read_data failed (corrupt, truncated or encrypted data)."""


def _read_libarchive(
    kind: str, path: Path, meter: Meter, visit: Visitor, passwords: tuple[str, ...],
    spool_dir: Path, max_member_bytes: int,
) -> str:
    if kind != "rar":
        return _read_libarchive_file(kind, path, meter, visit, passwords)
    lock = rar_lock(path)
    why = _cannot_decrypt(len(passwords))
    if lock.names and not lock.headers and passwords and _is_rar4(path):
        decrypted = _decrypt_rar4(path, meter, passwords, spool_dir)
        if decrypted is not None:
            try:
                return _read_libarchive_file(kind, decrypted, meter, visit, passwords)
            finally:
                decrypted.unlink(missing_ok=True)
        why = f"none of the {len(passwords)} known passwords worked"
    if lock.locked and passwords and unar_tools() is not None:
        return read_encrypted_rar(path, lock, meter, visit, passwords, spool_dir,
                                  max_member_bytes)
    if lock.headers:
        raise CorruptArchive(f"RAR archive with encrypted headers: {why}")
    return _read_libarchive_file(kind, path, meter, visit, passwords, lock.names,
                                 f"encrypted RAR entry: {why}")


def _is_rar4(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(7) == RAR4_MAGIC


def _decrypt_rar4(
    path: Path, meter: Meter, passwords: tuple[str, ...], spool_dir: Path
) -> Path | None:
    """A decrypted copy of the RAR 4 archive at `path` (unpacking.rar4_crypt) for the
    first password whose copy libarchive reads without a CRC or data error, or None
    when none does. The trial read drains every member under caps as large as the
    meter's own; a cap it reaches is the archive's, whatever the password."""
    for password in passwords:
        handle, name = tempfile.mkstemp(suffix=".rar", dir=spool_dir)
        os.close(handle)
        target, kept = Path(name), False
        try:
            decrypted_copy(path, password, target, meter.deadline)
            budget = Budget(meter.budget.max_total_bytes - meter.budget.bytes,
                            meter.budget.max_entries - meter.budget.entries)
            trial = Meter(budget, meter.compressed_size, meter.max_ratio)
            _read_libarchive_file("rar", target, trial, _drain, ())
            kept = True
            return target
        except CorruptArchive:
            continue  # a wrong password (or a layout the copy cannot follow)
        finally:
            if not kept:
                target.unlink(missing_ok=True)
    return None


def _drain(member: Member) -> None:
    if member.stream is not None:
        while member.stream.read(CHUNK):
            pass


def _read_libarchive_file(
    kind: str, path: Path, meter: Meter, visit: Visitor, passwords: tuple[str, ...],
    encrypted: frozenset[str] = frozenset(), locked: str = "",
) -> str:
    """One libarchive pass over `path`. For RAR: `encrypted` names the entries to report
    (libarchive 3.6 misses RAR 5's encryption record) and `locked` says why they cannot
    be read."""
    locked = locked or f"encrypted RAR entry: {_cannot_decrypt(len(passwords))}"
    archive_p = ffi.read_new()
    entry_p = ffi.entry_new()
    label = kind
    try:
        ffi.get_read_filter_function("none")(archive_p)
        for name in LIBARCHIVE_FORMATS[kind]:
            ffi.get_read_format_function(name)(archive_p)
        for password in passwords:  # used by the formats libarchive can decrypt (not RAR)
            ffi.read_add_passphrase(archive_p, password.encode())
        try:
            ffi.read_open_filename_w(archive_p, str(path), CHUNK)
        except ArchiveError as exc:
            reason = exc.msg or "not readable as this format"
            raise CorruptArchive(f"corrupt {kind} archive: {reason}") from exc
        while True:
            status = _lib.archive_read_next_header2(archive_p, entry_p)
            if status == _ARCHIVE_EOF:
                break
            label = _format_label(kind, archive_p)
            if status not in (_ARCHIVE_OK, _ARCHIVE_WARN):
                reason = _error(archive_p)
                if kind == "rar" and "ncrypt" in reason:
                    reason = f"{reason}: {locked}"
                raise CorruptArchive(_corrupt(label, meter, reason))
            meter.entry()
            _visit_entry(archive_p, entry_p, label, meter, visit, len(passwords), encrypted,
                         locked)
        return label
    finally:
        ffi.entry_free(entry_p)
        ffi.read_free(archive_p)


def _format_label(kind: str, archive_p: int) -> str:
    """ "rar" or "rar5" for RAR (libarchive names the version once it read a header)."""
    if kind != "rar":
        return kind
    name = _text(_lib.archive_format_name(archive_p))
    return "rar5" if "5" in name else "rar"


def _corrupt(label: str, meter: Meter, reason: str) -> str:
    done = f" after {meter.entries} entries" if meter.entries else ""
    return f"corrupt {label} archive{done}: {reason}"


def _visit_entry(
    archive_p: int,
    entry_p: int,
    label: str,
    meter: Meter,
    visit: Visitor,
    passwords: int,
    encrypted: frozenset[str],
    locked: str,
) -> None:
    name = _text(_lib.archive_entry_pathname(entry_p))
    kind = _lib.archive_entry_filetype(entry_p) & S_IFMT
    hardlink = _lib.archive_entry_hardlink(entry_p)
    if kind == S_IFDIR:
        visit(Member(name))
    elif kind == S_IFLNK:
        target = _text(_lib.archive_entry_symlink(entry_p))
        visit(Member(name, problem=f"symlink to {target!r} (not followed)"))
    elif hardlink:
        visit(Member(name, problem=f"hard link to {_text(hardlink)!r} (not followed)"))
    elif kind not in (S_IFREG, 0):
        visit(Member(name, problem=f"special file inside {label} (skipped)"))
    elif label.startswith("rar") and (
        _lib.archive_entry_is_encrypted(entry_p) or name in encrypted
    ):
        visit(Member(name, problem=locked))
    else:
        stream = Metered(_EntryData(archive_p, label), meter)
        try:
            visit(Member(name, stream=stream))  # type: ignore[arg-type]
            while stream.read(CHUNK):  # drain metered: skipping would decompress unseen
                pass
        except _DataError as exc:
            if _lib.archive_entry_is_encrypted(entry_p):
                visit(Member(name, problem=f"encrypted entry: none of the {passwords} known "
                                           f"passwords worked ({exc})"))  # fmt: skip
                return
            raise CorruptArchive(_corrupt(label, meter, str(exc))) from exc


def _cannot_decrypt(passwords: int) -> str:
    if not passwords:
        return "no archive passwords are configured"
    return ("libarchive cannot decrypt RAR and unar is not installed, so the "
            f"{passwords} known passwords could not be tried")


# --- RAR encryption, read from the headers (libarchive 3.6 misses RAR 5's) -----------------
RAR_MAX_HEADERS = 100_000
RAR5_MAX_HEADER = 2 << 20  # RAR 5 itself limits a header to 2 MiB


def rar_lock(path: Path) -> RarLock:
    """What of the RAR at `path` is encrypted: its headers, or which file entries.

    The block headers are walked here first (they are small, and readable unless the
    headers are encrypted): libarchive 3.6 skips RAR 5's encryption record and would
    "extract" the ciphertext. Headers that stop making sense end the walk with what was
    found so far: libarchive, or unar, reports its own errors."""
    with open(path, "rb") as handle:
        magic = handle.read(8)
        if magic == RAR5_MAGIC:
            return _rar5_lock(handle, path.stat().st_size)
        if magic[:7] == RAR4_MAGIC:
            handle.seek(7)
            return _rar4_lock(handle, path.stat().st_size)
    return RarLock(False, frozenset())


def _rar4_lock(handle: io.BufferedReader, size: int) -> RarLock:
    """RAR 2.9/4.x: the archive header's "block headers encrypted" flag (0x80) and the
    file headers' password flag (0x04), from the RAR 4.x technote's block layout."""
    names: set[str] = set()
    for _ in range(RAR_MAX_HEADERS):
        head = handle.read(7)
        if len(head) < 7:
            break
        _, kind, flags, length = struct.unpack("<HBHH", head)
        body = handle.read(max(length - 7, 0))
        if length < 7 or len(body) < length - 7:
            break
        if kind == 0x73 and flags & 0x80:
            return RarLock(True, frozenset())
        data = 0
        if (kind == 0x74 or flags & 0x8000) and len(body) >= 4:
            data = struct.unpack_from("<I", body)[0]
        if kind == 0x74 and len(body) >= 25:
            high = flags & 0x100 and len(body) >= 33
            if high:
                data += struct.unpack_from("<I", body, 25)[0] << 32
            if flags & 0x04:
                start = 33 if high else 25
                raw = body[start : start + struct.unpack_from("<H", body, 19)[0]]
                if flags & 0x200:  # an ASCII name, NUL, then RAR's own Unicode encoding
                    raw = raw.split(b"\0")[0]
                names.add(raw.decode("utf-8", "surrogateescape"))
        if kind == 0x7B or handle.tell() + data > size:  # the end, or data past it
            break
        handle.seek(data, 1)
    return RarLock(False, frozenset(names))


def _rar5_lock(handle: io.BufferedReader, size: int) -> RarLock:
    """RAR 5.0: an archive encryption header (type 4), or file headers with an
    encryption record in their extra area."""
    names: set[str] = set()
    for _ in range(RAR_MAX_HEADERS):
        start = handle.tell()
        prefix = handle.read(7)  # CRC32 and up to 3 bytes of header size
        if len(prefix) < 5:
            break
        length, used = _vint_at(prefix, 4)
        if length is None or length > RAR5_MAX_HEADER:
            break
        handle.seek(start + 4 + used)
        body = handle.read(length)
        if len(body) < length:
            break
        header = _rar5_header(body)
        if header is None:
            break
        kind, data_size, name, is_encrypted = header
        if kind == 4:
            return RarLock(True, frozenset())
        if kind == 2 and is_encrypted:
            names.add(name)
        if kind == 5 or handle.tell() + data_size > size:  # the end, or data past it
            break
        handle.seek(data_size, 1)
    return RarLock(False, frozenset(names))


def _vint_at(data: bytes, offset: int) -> tuple[int | None, int]:
    """(value, bytes used) of the RAR 5 variable-length integer at `offset`."""
    value = 0
    for index in range(10):
        if offset + index >= len(data):
            return None, index
        byte = data[offset + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, index + 1
    return None, 10


def _rar5_header(body: bytes) -> tuple[int, int, str, bool] | None:
    """(type, data size, file name, has an encryption record) of one header body."""
    offset = 0

    def vint() -> int:
        nonlocal offset
        value, used = _vint_at(body, offset)
        if value is None:
            raise ValueError("truncated vint")
        offset += used
        return value

    try:
        kind, flags = vint(), vint()
        extra = vint() if flags & 0x1 else 0
        data_size = vint() if flags & 0x2 else 0
        name, is_encrypted = "", False
        if kind == 2:
            file_flags = vint()
            vint(), vint()  # unpacked size, attributes
            offset += (4 if file_flags & 0x2 else 0) + (4 if file_flags & 0x4 else 0)
            vint(), vint()  # compression, host OS
            name_length = vint()
            name = body[offset : offset + name_length].decode("utf-8", "surrogateescape")
            is_encrypted = _has_encryption_record(body[len(body) - extra :] if extra else b"")
        return kind, data_size, name, is_encrypted
    except ValueError:
        return None


def _has_encryption_record(area: bytes) -> bool:
    offset = 0
    while offset < len(area):
        size, used = _vint_at(area, offset)
        if size is None or size == 0:
            return False
        kind, _ = _vint_at(area, offset + used)
        if kind == 0x01:
            return True
        offset += used + size
    return False


# --- OLE compound files (MSI) -------------------------------------------------------------------
def _read_ole(path: Path, meter: Meter, visit: Visitor) -> str:
    """Each stream of an OLE compound file is a member: an MSI's embedded cabinets come
    out as CAB members and are opened in turn. olefile reads a whole stream into memory,
    so a stream that claims to be larger than the file (OLE does not compress) is
    refused before it is read."""
    size = path.stat().st_size
    try:
        ole = olefile.OleFileIO(str(path))
    except LimitReached:
        raise
    except Exception as exc:  # olefile raises OSError, ValueError, struct.error, ...
        raise CorruptArchive(f"corrupt OLE compound file: {exc}") from exc
    with ole:
        label = "msi" if (ole.root.clsid or "").upper() == MSI_CLSID else "ole"
        try:
            streams = ole.listdir(streams=True, storages=False)
        except Exception as exc:
            raise CorruptArchive(f"corrupt {label} directory: {exc}") from exc
        for parts in streams:
            name = "/".join(msi_stream_name(part) for part in parts)
            if label == "msi" and name[:1] in ("!", "\x05"):
                continue  # MSI's database tables and summary: metadata, never a payload
            meter.entry()
            try:
                declared = ole.get_size(parts)
                if declared > size:
                    visit(Member(name, problem=f"stream of {declared} bytes in a {size}-byte "
                                               "file: malformed (skipped)"))  # fmt: skip
                    continue
                data = ole.openstream(parts)
            except LimitReached:
                raise
            except Exception as exc:
                visit(Member(name, problem=f"unreadable {label} stream: {exc}"))
                continue
            stream = Metered(data, meter)
            visit(Member(name, stream=stream))  # type: ignore[arg-type]
            while stream.read(CHUNK):
                pass
        return label


def msi_stream_name(raw: str) -> str:
    """MSI packs stream names two characters per code point (0x3800-0x47FF, one in
    0x4800-0x483F, 0x4840 marks a table); other OLE names are returned as they are."""
    out = []
    for char in raw:
        code = ord(char)
        if 0x3800 <= code < 0x4800:
            code -= 0x3800
            out.append(MSI_CHARS[code & 0x3F] + MSI_CHARS[(code >> 6) & 0x3F])
        elif 0x4800 <= code < 0x4840:
            out.append(MSI_CHARS[code - 0x4800])
        elif code == 0x4840:
            out.append("!")
        else:
            out.append(char)
    return "".join(out)
