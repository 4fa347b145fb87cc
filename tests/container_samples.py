"""Build real RAR, CAB, ISO 9660, cpio, ar/deb and MSI containers, and their hostile twins.

The well-formed ones come from Debian's own tools (bsdtar, gcab, genisoimage, dpkg-deb,
wixl, xorriso, and RARLAB's `rar` from Debian's non-free section), run here at test time
on a real ELF (/bin/true). `rar` 7 writes RAR 5 only, so RAR 4 files, and the RAR files
whose headers are made to lie, are written by `rar4_stored` / `rar5_stored` below, from
the published format descriptions (RAR 4.x technote; RAR 5.0 archive format), with the
"store" method (and, for RAR 4, real AES-128 encryption with RAR 3's key derivation).
Hostile twins are made by writing the same formats by hand (cpio, ar) or by patching a
tool's output in place (CAB, ISO, MSI), as a hostile sender would.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from unpacking.rar4_crypt import rar3_key

TRUE_ELF = Path("/bin/true").read_bytes()
TOOLS = {"bsdtar": "libarchive-tools", "gcab": "gcab", "genisoimage": "genisoimage",
         "wixl": "wixl", "dpkg-deb": "dpkg", "xorriso": "xorriso", "rar": "rar",
         "unar": "unar", "lsar": "unar"}  # fmt: skip


def missing_tools() -> list[str]:
    """Debian packages of the builders that are not installed."""
    return [package for tool, package in TOOLS.items() if shutil.which(tool) is None]


def _run(*argv: str | Path, cwd: Path) -> None:
    subprocess.run([str(arg) for arg in argv], cwd=cwd, check=True, capture_output=True)


def _tree(work: Path, files: dict[str, bytes]) -> Path:
    root = work / "tree"
    shutil.rmtree(root, ignore_errors=True)
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755)
    return root


# --- Debian's tools --------------------------------------------------------------------------
def bsdtar(work: Path, fmt: str, files: dict[str, bytes]) -> bytes:
    """`bsdtar --format=FMT` (newc, odc, ar, arbsd, ...) over the files given."""
    root = _tree(work, files)
    out = work / f"out.{fmt}"
    _run("bsdtar", f"--format={fmt}", "-cf", out, "-C", root, *sorted(files), cwd=work)
    return out.read_bytes()


def rar(work: Path, files: dict[str, bytes], *flags: str, out: str = "out.rar") -> bytes:
    """`rar a -ma5 FLAGS` (RARLAB's own compressor; -p/-hp encrypt) over the files given,
    added to `out` (so two calls make an archive with entries of both kinds)."""
    root = _tree(work, files)
    _run("rar", "a", "-idq", "-ma5", *flags, work / out, *sorted(files), cwd=root)
    return (work / out).read_bytes()


def cab(work: Path, files: dict[str, bytes], compress: bool = True) -> bytes:
    """`gcab -c -n [-z]` (MSZIP when compressed)."""
    root = _tree(work, files)
    out = work / "out.cab"
    out.unlink(missing_ok=True)
    flags = ["-c", "-n"] + (["-z"] if compress else [])
    _run("gcab", *flags, out, *sorted(root / name for name in files), cwd=work)
    return out.read_bytes()


def iso(work: Path, files: dict[str, bytes], rock_ridge: bool = True) -> bytes:
    """`genisoimage` (Rock Ridge names unless rock_ridge=False)."""
    root = _tree(work, files)
    out = work / "out.iso"
    flags = ["-quiet"] + (["-R"] if rock_ridge else [])
    _run("genisoimage", *flags, "-o", out, root, cwd=work)
    return out.read_bytes()


def deb(work: Path, files: dict[str, bytes]) -> bytes:
    """`dpkg-deb --build` of a package holding the files (paths under the package root)."""
    root = _tree(work, {f"usr/bin/{name}": data for name, data in files.items()})
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        "Package: ae-fixture\nVersion: 1.0\nArchitecture: amd64\n"
        "Maintainer: ae <ae@localhost>\nDescription: fixture\n"
    )
    out = work / "out.deb"
    _run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, out, cwd=work)
    return out.read_bytes()


WXS = """<?xml version="1.0" encoding="utf-8"?>
<Wix xmlns="http://schemas.microsoft.com/wix/2006/wi">
  <Product Id="*" Name="ae-fixture" Language="1033" Version="1.0.0" Manufacturer="ae"
           UpgradeCode="12345678-1234-1234-1234-123456789012">
    <Package InstallerVersion="200" Compressed="yes" InstallScope="perMachine"/>
    <Media Id="1" Cabinet="payload.cab" EmbedCab="yes"/>
    <Directory Id="TARGETDIR" Name="SourceDir">
      <Directory Id="ProgramFilesFolder">
        <Directory Id="INSTALLDIR" Name="ae">
          <Component Id="C1" Guid="12345678-1234-1234-1234-123456789013">
            <File Id="{file_id}" Name="{name}" Source="{source}"/>
          </Component>
        </Directory>
      </Directory>
    </Directory>
    <Feature Id="F1" Level="1"><ComponentRef Id="C1"/></Feature>
  </Product>
</Wix>
"""


def msi(work: Path, name: str, data: bytes, file_id: str = "TrueExe") -> bytes:
    """`wixl`: an MSI installing one file, its cabinet embedded as a stream."""
    root = _tree(work, {name: data})
    wxs = work / "product.wxs"
    wxs.write_text(WXS.format(file_id=file_id, name=name, source=(root / name).relative_to(work)))
    out = work / "out.msi"
    _run("wixl", "-o", out, wxs, cwd=work)
    return out.read_bytes()


# --- hand-written formats (for names and counts the tools refuse) -----------------------------
def cpio_newc(entries: list[tuple[str, bytes]], mode: int = 0o100755) -> bytes:
    """SVR4 "newc" cpio, names as given (the tools strip '../')."""
    out = bytearray()
    entries = [*entries, ("TRAILER!!!", b"")]
    for ino, (name, data) in enumerate(entries, 1):
        raw = name.encode() + b"\0"
        fields = [ino, mode if name != "TRAILER!!!" else 0, 0, 0, 1, 0, len(data),
                  0, 0, 0, 0, len(raw), 0]  # fmt: skip
        out += b"070701" + b"".join(b"%08X" % value for value in fields) + raw
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def ar_bsd(entries: list[tuple[str, bytes]]) -> bytes:
    """BSD ar: '#1/<len>' long names, so a name may hold any byte ('/' included)."""
    out = bytearray(b"!<arch>\n")
    for name, data in entries:
        raw = name.encode()
        header = f"#1/{len(raw)}".ljust(16) + "0".ljust(12) + "0".ljust(6) + "0".ljust(6)
        header += "100755".ljust(8) + str(len(raw) + len(data)).ljust(10) + "`\n"
        out += header.encode() + raw + data
        out += b"\n" * (len(out) % 2)
    return bytes(out)


RAR4_SIGNATURE = b"Rar!\x1a\x07\x00"
RAR5_SIGNATURE = b"Rar!\x1a\x07\x01\x00"


def _rar4_block(kind: int, flags: int, body: bytes, data: bytes = b"") -> bytes:
    header = struct.pack("<BHH", kind, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(header) & 0xFFFF) + header + data


def rar4_stored(
    entries: list[tuple[str, bytes]], encrypted: bool = False, password: str = ""
) -> bytes:
    """RAR 2.9/4.x with every file stored (method 0x30), Unix host, version 2.9.

    `encrypted` sets the file headers' password flag (0x04) without encrypting anything:
    enough to see what a reader does with an encrypted entry. `password` encrypts each
    file for real (AES-128-CBC, a salt per file), as RAR 3.x and 4.x do."""
    out = bytearray(RAR4_SIGNATURE)
    out += _rar4_block(0x73, 0, b"\0" * 6)  # archive header: two reserved fields
    for index, (name, data) in enumerate(entries):
        raw, packed, salt = name.encode(), data, b""
        flags = 0x8000 | (0x04 if encrypted or password else 0)  # LONG_BLOCK: data follows
        if password:
            salt = bytes([index] * 8)
            packed = rar3_encrypt(password, salt, data)
            flags |= 0x400  # a salt follows the name
        body = struct.pack("<IIBIIBBHI", len(packed), len(data), 3, zlib.crc32(data),
                           0x5A210000, 29, 0x30, len(raw), 0o100755) + raw + salt  # fmt: skip
        out += _rar4_block(0x74, flags, body, packed)
    out += _rar4_block(0x7B, 0x4000, b"")
    return bytes(out)


def rar3_encrypt(password: str, salt: bytes, data: bytes) -> bytes:
    """RAR 3.x/4.x encryption: AES-128-CBC with the product's key derivation (RARLAB's
    `rar` extracting the result is what checks it), the data zero-padded to the block."""
    key, iv = rar3_key(password, salt)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(data + bytes(-len(data) % 16)) + encryptor.finalize()


def vint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _rar5_block(
    kind: int, flags: int, fields: bytes, extra: bytes = b"", data: bytes = b""
) -> bytes:
    body = vint(kind) + vint(flags | (0x1 if extra else 0) | (0x2 if data else 0))
    if extra:
        body += vint(len(extra))
    if data:
        body += vint(len(data))
    body += fields + extra
    sized = vint(len(body)) + body
    return struct.pack("<I", zlib.crc32(sized)) + sized + data


def rar5_stored(
    entries: list[tuple[str, bytes]], encrypted: bool = False, encrypted_headers: bool = False
) -> bytes:
    """RAR 5.0 with every file stored (method 0), Unix host, CRC32 of each file.

    `encrypted` adds a file encryption record (AES-256, salt and IV) without encrypting
    the data, `encrypted_headers` an archive encryption header before the others: enough
    to see what a reader does with them."""
    out = bytearray(RAR5_SIGNATURE)
    if encrypted_headers:  # version 0, no flags, KDF count, salt
        out += _rar5_block(4, 0, vint(0) + vint(0) + bytes([15]) + bytes(range(16)))
    out += _rar5_block(1, 0, vint(0))  # main archive header: no flags
    for name, data in entries:
        raw = name.encode()
        crc = struct.pack("<I", zlib.crc32(data))
        # file flags (CRC present), size, mode, CRC, compression (store), host OS (Unix)
        fields = vint(0x4) + vint(len(data)) + vint(0o100755) + crc + vint(0) + vint(1)
        fields += vint(len(raw)) + raw
        extra = b""
        if encrypted:
            record = vint(0x01) + vint(0) + vint(0) + bytes([15]) + bytes(range(32))
            extra = vint(len(record)) + record
        out += _rar5_block(2, 0, fields, extra, data)
    out += _rar5_block(5, 0, vint(0))
    return bytes(out)


def zip_with_encrypted_rars(work: Path) -> bytes:
    """A zip of a plain ELF and two encrypted RARs with an ELF each (all three differ):
    RAR 4 (password "virus", decrypted by unpacking.rar4_crypt) and RAR 5 ("infected",
    read with unar), the archives whose reading takes time of its own."""
    four = rar4_stored([("bin/true", TRUE_ELF + b"\0")], password="virus")
    five = rar(work, {"bin/true": TRUE_ELF + b"\0\0"}, "-pinfected")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in (("true", TRUE_ELF), ("four.rar", four), ("five.rar", five)):
            archive.writestr(name, data)
    return out.getvalue()


# --- patching a tool's output in place ---------------------------------------------------------
def patch_name(container: bytes, old: str, new: str) -> bytes:
    """Replace a stored name by another of the same length, everywhere it occurs."""
    if len(old) != len(new) or old.encode() not in container:
        raise ValueError(f"cannot patch {old!r} into {new!r}")
    return container.replace(old.encode(), new.encode())


def iso_overlapping(work: Path, copies: int, size: int) -> bytes:
    """A genisoimage ISO whose `copies` directory records all point at the extent of one
    `size`-byte file of zeros: a few sectors of directory that read back as copies*size
    bytes (the overlapping-extent bomb)."""
    files = {"big": bytes(size)} | {f"f{index:04d}": b"x" for index in range(copies)}
    image = bytearray(iso(work, files, rock_ridge=False))
    records = list(_iso_root_records(image))
    big = next(record for name, record in records if name == b"BIG.;1")
    extent = image[big + 2 : big + 10]  # location, both byte orders
    length = image[big + 10 : big + 18]  # size, both byte orders
    for name, record in records:
        if name.startswith(b"F"):
            image[record + 2 : record + 10] = extent
            image[record + 10 : record + 18] = length
    return bytes(image)


def _iso_root_records(image: bytearray):
    """(name, offset) of each directory record in the root directory of a plain ISO."""
    pvd = 16 * 2048
    root = pvd + 156
    location = struct.unpack("<I", image[root + 2 : root + 6])[0]
    size = struct.unpack("<I", image[root + 10 : root + 14])[0]
    offset, end = location * 2048, location * 2048 + size
    while offset < end:
        length = image[offset]
        if length == 0:  # records do not cross sectors: skip to the next one
            offset = (offset // 2048 + 1) * 2048
            continue
        name_length = image[offset + 32]
        yield bytes(image[offset + 33 : offset + 33 + name_length]), offset
        offset += length
