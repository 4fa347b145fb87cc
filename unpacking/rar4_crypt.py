"""RAR 4 (2.9 to 4.x) encryption, undone here so that libarchive can decompress.

libarchive decompresses RAR 4 but cannot decrypt it, and bookworm's unar rejects
encrypted entries RARLAB's own `rar` extracts. RAR 4 encrypts each file's packed data
alone (AES-128-CBC; key and IV from the password and the file's salt, RAR 3's key
derivation), while the block headers stay readable unless the archive says otherwise.
So `decrypted_copy` writes a copy of the archive with every encrypted file's data
decrypted and its password and salt flags cleared, for a password from the list. A
stored file's CRC is checked here (libarchive does not check stored data); the caller
reads the copy once before trusting it, where libarchive checks compressed files' CRCs.
Archives whose headers are encrypted are not handled here (unpacking.rar_unar).
RAR 3's own SHA-1 rewrote its input for passwords of about 28 characters and more; that
quirk is not reproduced, so such passwords would not open (the defaults are short).
"""

from __future__ import annotations

import functools
import hashlib
import struct
import time
import zlib
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from unpacking.archives import ArchiveLimit, CorruptArchive, TimeLimit

__all__ = ["RAR4_MAGIC", "decrypted_copy", "rar3_key"]

RAR4_MAGIC = b"Rar!\x1a\x07\x00"
MAX_BLOCKS = 100_000
FILE, END = 0x74, 0x7B
LONG_BLOCK, HIGH_SIZES, SALT, PASSWORD = 0x8000, 0x100, 0x400, 0x04
KDF_ROUNDS = 1 << 18
STORED = 0x30


@functools.lru_cache(maxsize=64)
def rar3_key(password: str, salt: bytes) -> tuple[bytes, bytes]:
    """(AES-128 key, IV): SHA-1 over the UTF-16LE password, the salt and a 3-byte round
    counter, 2**18 rounds; a byte of the running digest every 2**14 rounds is the IV;
    the final digest's first four words, each byte-reversed, the key. (RARLAB's `rar`
    extracting what this encrypts is the check: tests/container_samples.py.)"""
    seed = password.encode("utf-16-le") + salt
    sha, iv = hashlib.sha1(), bytearray()
    for i in range(KDF_ROUNDS):
        sha.update(seed + i.to_bytes(3, "little"))
        if i % (KDF_ROUNDS // 16) == 0:
            iv.append(sha.copy().digest()[19])
    digest = sha.digest()
    return b"".join(digest[k : k + 4][::-1] for k in range(0, 16, 4)), bytes(iv)


def decrypted_copy(source: Path, password: str, target: Path, deadline: float) -> None:
    """Write `source` (a RAR 4 archive with readable headers) to `target` with every
    encrypted file's data decrypted with `password`. A wrong password gives data that
    fails the file's CRC when read. Raises CorruptArchive on a layout it cannot follow,
    ArchiveLimit past `deadline` (time.monotonic())."""
    with open(source, "rb") as src, open(target, "wb") as out:
        if src.read(7) != RAR4_MAGIC:
            raise CorruptArchive("corrupt rar archive: not RAR 4")
        out.write(RAR4_MAGIC)
        for _ in range(MAX_BLOCKS):
            head = src.read(7)
            if not head:
                return
            if len(head) < 7:
                raise CorruptArchive("corrupt rar archive: truncated block header")
            _, kind, flags, length = struct.unpack("<HBHH", head)
            body = src.read(max(length - 7, 0))
            if length < 7 or len(body) < length - 7:
                raise CorruptArchive("corrupt rar archive: truncated block header")
            packed = _packed_size(kind, flags, body)
            if kind == FILE and flags & PASSWORD:
                if time.monotonic() > deadline:
                    raise TimeLimit("encrypted RAR took too long to decrypt")
                _write_decrypted(out, src, flags, body, packed, password)
            else:
                out.write(head + body)
                _copy(src, out, packed)
            if kind == END:
                return
        raise ArchiveLimit(f"more than {MAX_BLOCKS} RAR blocks")


def _packed_size(kind: int, flags: int, body: bytes) -> int:
    if not (kind == FILE or flags & LONG_BLOCK):
        return 0
    if len(body) < 4:
        raise CorruptArchive("corrupt rar archive: truncated block header")
    size = struct.unpack_from("<I", body)[0]
    if kind == FILE and flags & HIGH_SIZES:
        if len(body) < 33:
            raise CorruptArchive("corrupt rar archive: truncated file header")
        size += struct.unpack_from("<I", body, 25)[0] << 32
    return size


def _write_decrypted(
    out: BinaryIO, src: BinaryIO, flags: int, body: bytes, packed: int, password: str
) -> None:
    """One file block: the header without its password and salt flags (and salt), the
    data decrypted. A stored file (method 0x30) is cut to its size and checked against
    its CRC here, as libarchive does not check stored data; compressed data keeps its
    AES padding, which the decompressor never reaches, and libarchive checks its CRC."""
    if len(body) < 25:
        raise CorruptArchive("corrupt rar archive: truncated file header")
    high = bool(flags & HIGH_SIZES)
    name_end = (33 if high else 25) + struct.unpack_from("<H", body, 19)[0]
    salt = b""
    if flags & SALT:
        salt = body[name_end : name_end + 8]
        if len(salt) < 8:
            raise CorruptArchive("corrupt rar archive: truncated salt")
        body = body[:name_end] + body[name_end + 8 :]
    if packed % 16:
        raise CorruptArchive("corrupt rar archive: encrypted data not in 16-byte blocks")
    stored = body[18] == STORED
    size = struct.unpack_from("<I", body, 4)[0]
    if high:
        size += struct.unpack_from("<I", body, 29)[0] << 32
    if stored:  # the packed size becomes the file's own
        if size > packed:
            raise CorruptArchive("corrupt rar archive: stored file larger than its data")
        fields = bytearray(body)
        struct.pack_into("<I", fields, 0, size & 0xFFFFFFFF)
        if high:
            struct.pack_into("<I", fields, 25, size >> 32)
        body = bytes(fields)
    key, iv = rar3_key(password, salt)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    flags &= ~(PASSWORD | SALT)
    header = struct.pack("<BHH", FILE, flags, 7 + len(body)) + body
    out.write(struct.pack("<H", zlib.crc32(header) & 0xFFFF) + header)
    remaining, keep, crc = packed, size if stored else packed, 0
    while remaining:
        chunk = src.read(min(remaining, 1 << 20))
        if not chunk or len(chunk) % 16:
            raise CorruptArchive("corrupt rar archive: encrypted data cut short")
        plain = decryptor.update(chunk)[:keep]
        keep -= len(plain)
        crc = zlib.crc32(plain, crc)
        out.write(plain)
        remaining -= len(chunk)
    if stored and crc != struct.unpack_from("<I", body, 9)[0]:
        raise WrongPassword("stored RAR entry fails its CRC: wrong password")


class WrongPassword(CorruptArchive):
    """The data decrypted with this password is not the file's."""


def _copy(src: BinaryIO, out: BinaryIO, size: int) -> None:
    while size:
        chunk = src.read(min(size, 1 << 20))
        if not chunk:
            return  # truncated: libarchive names it when it reads the copy
        out.write(chunk)
        size -= len(chunk)
