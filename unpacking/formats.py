"""Recognise ELF, PE and Mach-O executables and reject headers that are obviously broken.

angr happily spends minutes on a file whose header promises tables that are not there, so
the unpack stage checks the few header fields that would make loading pointless and fails
the sample with a clear reason instead. Only structure is checked here; which machines
are supported is the lifter's business.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

HEAD_BYTES = 4096

ELF_MAGIC = b"\x7fELF"
MACHO_THIN_LE = (b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe")  # 32-bit, 64-bit, little-endian
MACHO_THIN_BE = (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf")
MACHO_FAT = (b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf")  # fat, fat64 (always big-endian)
MAX_FAT_ARCHS = 44  # Java class files share 0xCAFEBABE; their "count" is a version >= 45
MAX_TABLE_ENTRIES = 0xFF00  # SHN_LORESERVE: a larger count is a header that lies
MAX_PE_SECTIONS = 96  # the Windows loader refuses more


class BadSample(Exception):
    """Input that can never be analysed; the pipeline fails it once, without retries."""


def _head(source: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source[:HEAD_BYTES])
    with open(source, "rb") as handle:
        return handle.read(HEAD_BYTES)


def detect_executable(source: str | os.PathLike[str] | bytes) -> str | None:
    """ "ELF", "PE", "MachO" or None, from the magic bytes of a path or of a file's head."""
    head = _head(source)
    if head.startswith(ELF_MAGIC):
        return "ELF"
    if head.startswith(b"MZ"):
        return "PE"
    if head[:4] in MACHO_THIN_LE or head[:4] in MACHO_THIN_BE:
        return "MachO"
    if head[:4] in MACHO_FAT and len(head) >= 8:
        count = struct.unpack(">I", head[4:8])[0]
        if 0 < count <= MAX_FAT_ARCHS:
            return "MachO"
    return None


def check_executable(path: str | os.PathLike[str]) -> None:
    """Raise BadSample when the header is truncated or points outside the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        kind = detect_executable(handle.read(HEAD_BYTES))
        if kind is None:
            raise BadSample("not an ELF, PE or Mach-O executable")
        handle.seek(0)
        if kind == "ELF":
            _check_elf(handle, size)
        elif kind == "PE":
            _check_pe(handle, size)
        else:
            _check_macho(handle, size)


def _read_at(handle, offset: int, length: int) -> bytes:
    handle.seek(offset)
    return handle.read(length)


def _check_table(what: str, offset: int, count: int, entsize: int, size: int) -> None:
    if count == 0:
        return
    if offset >= size:
        raise BadSample(f"malformed {what}: offset {offset} is beyond end of file ({size} bytes)")
    if offset + count * entsize > size:
        raise BadSample(
            f"malformed {what}: {count} entries of {entsize} bytes at offset {offset} "
            f"run past end of file ({size} bytes)"
        )


def _check_elf(handle, size: int) -> None:
    ident = _read_at(handle, 0, 16)
    if len(ident) < 16:
        raise BadSample(f"truncated ELF header: {size} bytes, e_ident alone needs 16")
    ei_class, ei_data = ident[4], ident[5]
    if ei_class not in (1, 2):
        raise BadSample(f"malformed ELF header: unknown class {ei_class} (expected 1 or 2)")
    if ei_data not in (1, 2):
        raise BadSample(f"malformed ELF header: unknown data encoding {ei_data}")
    bits, header_size = (32, 52) if ei_class == 1 else (64, 64)
    if size < header_size:
        raise BadSample(f"truncated ELF header: {size} bytes, ELF{bits} header needs {header_size}")
    end = "<" if ei_data == 1 else ">"
    raw = _read_at(handle, 0, header_size)
    if bits == 32:
        fields = struct.unpack(end + "16xHHIIIIIHHHHHH", raw)
    else:
        fields = struct.unpack(end + "16xHHIQQQIHHHHHH", raw)
    (_type, _machine, _version, _entry, phoff, shoff, _flags, _ehsize,
     phentsize, phnum, shentsize, shnum, _shstrndx) = fields  # fmt: skip
    min_ph, min_sh = (32, 40) if bits == 32 else (56, 64)

    if phnum:
        if phnum > MAX_TABLE_ENTRIES:
            raise BadSample(f"malformed ELF header: absurd e_phnum {phnum}")
        if phentsize < min_ph:
            raise BadSample(f"malformed ELF header: e_phentsize {phentsize} < {min_ph}")
        _check_table("ELF program header table", phoff, phnum, phentsize, size)

    if shoff:
        if shoff >= size:
            raise BadSample(
                f"malformed ELF section header table: e_shoff {shoff} is beyond end of file "
                f"({size} bytes)"
            )
        if shnum or shentsize:
            if shentsize < min_sh:
                raise BadSample(f"malformed ELF header: e_shentsize {shentsize} < {min_sh}")
        if shnum == 0 and shentsize >= min_sh:
            # More than SHN_LORESERVE sections: the real count is section 0's sh_size.
            first = _read_at(handle, shoff, min_sh)
            if len(first) < min_sh:
                raise BadSample("malformed ELF section header table: truncated first entry")
            if bits == 32:
                shnum = struct.unpack(end + "I", first[20:24])[0]
            else:
                shnum = struct.unpack(end + "Q", first[32:40])[0]
        elif shnum > MAX_TABLE_ENTRIES:
            raise BadSample(f"malformed ELF header: absurd e_shnum {shnum}")
        _check_table("ELF section header table", shoff, shnum, shentsize, size)


def _check_pe(handle, size: int) -> None:
    if size < 64:
        raise BadSample(f"truncated PE: {size} bytes, the DOS header alone needs 64")
    e_lfanew = struct.unpack("<I", _read_at(handle, 0x3C, 4))[0]
    if e_lfanew + 24 > size:
        raise BadSample(
            f"malformed PE: e_lfanew {e_lfanew} points beyond end of file ({size} bytes)"
        )
    header = _read_at(handle, e_lfanew, 24)
    if header[:4] != b"PE\0\0":
        raise BadSample(f"malformed PE: no 'PE\\0\\0' signature at e_lfanew {e_lfanew}")
    _machine, sections, _time, _symptr, _nsyms, opt_size, _chars = struct.unpack(
        "<HHIIIHH", header[4:24]
    )
    if sections > MAX_PE_SECTIONS:
        raise BadSample(f"malformed PE: absurd NumberOfSections {sections} (max {MAX_PE_SECTIONS})")
    opt_offset = e_lfanew + 24
    if opt_offset + opt_size > size:
        raise BadSample(
            f"truncated PE: optional header ({opt_size} bytes) runs past end of file ({size} bytes)"
        )
    if opt_size >= 2:
        magic = struct.unpack("<H", _read_at(handle, opt_offset, 2))[0]
        if magic not in (0x10B, 0x20B, 0x107):
            raise BadSample(f"malformed PE: unknown optional header magic {magic:#x}")
    _check_table("PE section table", opt_offset + opt_size, sections, 40, size)


def _check_macho(handle, size: int) -> None:
    magic = _read_at(handle, 0, 4)
    if magic in MACHO_FAT:
        _check_fat(handle, size, wide=magic == MACHO_FAT[1])
        return
    end = "<" if magic in MACHO_THIN_LE else ">"
    header_size = 32 if magic in (MACHO_THIN_LE[1], MACHO_THIN_BE[1]) else 28
    if size < header_size:
        raise BadSample(f"truncated Mach-O header: {size} bytes, header needs {header_size}")
    _cpu, _sub, _type, ncmds, sizeofcmds = struct.unpack(end + "4xiiIII", _read_at(handle, 0, 24))
    if header_size + sizeofcmds > size:
        raise BadSample(
            f"truncated Mach-O: {sizeofcmds} bytes of load commands run past end of file "
            f"({size} bytes)"
        )
    if ncmds * 8 > sizeofcmds:
        raise BadSample(f"malformed Mach-O: {ncmds} load commands cannot fit in {sizeofcmds} bytes")


def _check_fat(handle, size: int, wide: bool) -> None:
    count = struct.unpack(">I", _read_at(handle, 4, 4))[0]
    entsize = 32 if wide else 20
    table = _read_at(handle, 8, count * entsize)
    if len(table) < count * entsize:
        raise BadSample(f"truncated Mach-O universal header: {count} architectures announced")
    for index in range(count):
        entry = table[index * entsize : (index + 1) * entsize]
        if wide:
            _cpu, _sub, offset, length, _align, _res = struct.unpack(">iiQQII", entry)
        else:
            _cpu, _sub, offset, length, _align = struct.unpack(">iiIII", entry)
        if offset + length > size or length < 28:
            raise BadSample(
                f"malformed Mach-O universal binary: architecture {index} "
                f"(offset {offset}, size {length}) lies outside the file ({size} bytes)"
            )


# --- containers ------------------------------------------------------------------------------
# How many leading bytes detect_archive needs: ISO 9660's first volume descriptor starts
# at sector 16 (offset 0x8000) and carries "CD001" at 0x8001.
ISO_MAGIC_OFFSET = 0x8001
ARCHIVE_HEAD_BYTES = ISO_MAGIC_OFFSET + 5
RAR4_MAGIC = b"Rar!\x1a\x07\x00"
RAR5_MAGIC = b"Rar!\x1a\x07\x01\x00"
CAB_MAGIC = b"MSCF\0\0\0\0"
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # MSI, old Office documents, ...
AR_MAGIC = b"!<arch>\n"  # ar, .a static libraries, .deb packages
CPIO_MAGICS = (b"070701", b"070702", b"070707")  # newc, crc, odc (portable ASCII)
CPIO_BINARY = (b"\xc7\x71", b"\x71\xc7")  # old binary cpio, little- and big-endian


def detect_archive(head: bytes) -> str | None:
    """The container kind from a file's first bytes (ARCHIVE_HEAD_BYTES of them for ISO):
    "zip", "7z", "gzip", "bzip2", "xz", "tar", "rar" (v4 or v5), "cab", "iso9660",
    "cpio", "ar" or "ole" (MSI and other OLE compound files); None otherwise."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh") and head[3:4].isdigit() and head[3:4] != b"0":
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(RAR4_MAGIC) or head.startswith(RAR5_MAGIC):
        return "rar"
    if head.startswith(CAB_MAGIC):
        return "cab"
    if head.startswith(OLE_MAGIC):
        return "ole"
    if head.startswith(AR_MAGIC):
        return "ar"
    if head[:6] in CPIO_MAGICS or _looks_like_binary_cpio(head):
        return "cpio"
    if _looks_like_tar(head):
        return "tar"
    if head[ISO_MAGIC_OFFSET : ISO_MAGIC_OFFSET + 5] == b"CD001":
        return "iso9660"
    return None


def _looks_like_binary_cpio(head: bytes) -> bool:
    """Two magic bytes are weak: also want a NUL-terminated first name where the header
    says it ends."""
    if head[:2] not in CPIO_BINARY or len(head) < 26:
        return False
    end = "<" if head[:2] == CPIO_BINARY[0] else ">"
    namesize = struct.unpack(end + "H", head[20:22])[0]
    return 1 < namesize <= 1024 and len(head) >= 26 + namesize and head[25 + namesize] == 0


def _looks_like_tar(head: bytes) -> bool:
    if len(head) < 512:
        return False
    if head[257:262] == b"ustar":
        return True
    try:  # old V7 tar has no magic: trust a matching header checksum
        stored = int(head[148:156].replace(b"\0", b" ").strip() or b"x", 8)
    except ValueError:
        return False
    computed = sum(head[:148]) + 8 * 32 + sum(head[156:512])
    return stored == computed
