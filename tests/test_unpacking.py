"""Hostile inputs for the unpack stage, all built here in memory (no committed blobs).

Every test runs with the working directory set to an empty scratch folder and checks,
on teardown, that nothing was written anywhere but inside the blob store's root and
that no temporary spool file was left behind.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import random
import stat
import struct
import subprocess
import tarfile
import zipfile
import zlib
from pathlib import Path

import py7zr
import pytest

from store.blobs import BlobStore
from store.blobs_local import LocalBlobStore
from tests import container_samples
from tests.conftest import scratch_leftovers
from unpacking.archives import detect_archive
from unpacking.contained import unpack_contained_blocking
from unpacking.extract import BadSample, Child, UnpackLimits, UnpackReport
from unpacking.formats import check_executable, detect_executable

TRUE_ELF = Path("/bin/true").read_bytes()
MiB = 1 << 20


# --- fixtures -----------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A BlobStore in tmp_path/store; fails the test if anything lands outside it."""
    root, cwd = tmp_path / "store", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    blobs = LocalBlobStore(root)
    yield blobs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "store"]
    assert list(cwd.iterdir()) == [], "something was written relative to the cwd"
    assert scratch_leftovers(root / "tmp") == [], "temporary files left behind"
    assert {p.name for p in root.iterdir()} <= {"tmp", "sha256"}


def unpack_sample(blobs: BlobStore, sha256: str,
                  limits: UnpackLimits = UnpackLimits(),  # noqa: B008 - frozen
                  *, name: str | None = None) -> UnpackReport:
    """The worker's path: unpacking in its sandboxed child process (unpacking/contained.py)."""
    return unpack_contained_blocking(blobs, sha256, limits, name=name)


def unpack(blobs: BlobStore, data: bytes, **kwargs) -> UnpackReport:
    return unpack_sample(blobs, blobs.put_bytes(data), **kwargs)


def bad(blobs: BlobStore, data: bytes, **kwargs) -> str:
    with pytest.raises(BadSample) as info:
        unpack(blobs, data, **kwargs)
    return str(info.value)


def reasons(report: UnpackReport) -> dict[str, str]:
    return {item["name"]: item["reason"] for item in report.skipped}


def names(report: UnpackReport) -> list[str]:
    return [child.name for child in report.children]


# --- builders -----------------------------------------------------------------------------
def elf(variant: int = 0) -> bytes:
    """A real ELF (/bin/true); trailing bytes make distinct but still valid variants."""
    return TRUE_ELF + b"\0" * variant


def elf_with(**fields: int) -> bytearray:
    """/bin/true (ELF64 little-endian) with some header fields overwritten."""
    offsets = {
        "e_phoff": (32, "<Q"),
        "e_shoff": (40, "<Q"),
        "e_phnum": (56, "<H"),
        "e_shnum": (60, "<H"),
        "e_shentsize": (58, "<H"),
    }
    data = bytearray(TRUE_ELF)
    for name, value in fields.items():
        offset, fmt = offsets[name]
        struct.pack_into(fmt, data, offset, value)
    return data


def pe(sections: int = 1, e_lfanew: int = 0x40, signature: bytes = b"PE\0\0") -> bytes:
    """A minimal, structurally valid PE32 image (DOS header, COFF, optional header, sections)."""
    dos = bytearray(0x40)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, e_lfanew)
    coff = struct.pack("<HHIIIHH", 0x14C, sections, 0, 0, 0, 0xE0, 0x102)
    optional = struct.pack("<H", 0x10B) + bytes(0xE0 - 2)
    table = b"".join(b".text\0\0\0" + bytes(32) for _ in range(min(sections, 4)))
    return bytes(dos) + signature + coff + optional + table + bytes(512)


def macho(ncmds: int = 1, sizeofcmds: int = 16) -> bytes:
    """A 64-bit little-endian Mach-O header followed by `sizeofcmds` bytes of commands."""
    header = b"\xcf\xfa\xed\xfe" + struct.pack(
        "<iiIIIII", 0x01000007, 3, 2, ncmds, sizeofcmds, 0, 0
    )
    return header + bytes(16)


def fat_macho() -> bytes:
    thin = macho()
    return (
        b"\xca\xfe\xba\xbe"
        + struct.pack(">I", 1)
        + struct.pack(">iiIII", 0x01000007, 3, 28, len(thin), 0)
        + thin
    )


def zip_of(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as archive:
        for name, data in entries:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buf.getvalue()


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def tar_file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def tar_special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, None


def seven_zip(
    entries: list[tuple[str, bytes]], password: str | None = None, header_encryption: bool = False
) -> bytes:
    buf = io.BytesIO()
    with py7zr.SevenZipFile(
        buf, "w", password=password, header_encryption=header_encryption
    ) as archive:
        for name, data in entries:
            archive.writestr(data, name)
    return buf.getvalue()


def _zc_update(keys: list[int], byte: int) -> None:
    def crc(value: int, b: int) -> int:
        return zlib.crc32(bytes([b]), value ^ 0xFFFFFFFF) ^ 0xFFFFFFFF

    keys[0] = crc(keys[0], byte)
    keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
    keys[2] = crc(keys[2], keys[1] >> 24)


def zipcrypto(entries: list[tuple[str, bytes]], password: bytes) -> bytes:
    """A zip with traditional PKWARE (ZipCrypto) encryption; zipfile can only read those."""
    out, central = io.BytesIO(), []
    for name, data in entries:
        crc = zlib.crc32(data)
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        plain = bytes(11) + bytes([crc >> 24]) + packer.compress(data) + packer.flush()
        keys = [0x12345678, 0x23456789, 0x34567890]
        for byte in password:
            _zc_update(keys, byte)
        secret = bytearray()
        for byte in plain:
            temp = (keys[2] | 2) & 0xFFFF
            secret.append(byte ^ (((temp * (temp ^ 1)) >> 8) & 0xFF))
            _zc_update(keys, byte)
        raw_name, offset = name.encode(), out.tell()
        out.write(
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                20,
                1,
                8,
                0,
                0x21,
                crc,
                len(secret),
                len(data),
                len(raw_name),
                0,
            )
            + raw_name
            + secret
        )
        central.append(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                1,
                8,
                0,
                0x21,
                crc,
                len(secret),
                len(data),
                len(raw_name),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + raw_name
        )
    directory, start = b"".join(central), out.tell()
    out.write(directory)
    out.write(
        struct.pack(
            "<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(directory), start, 0
        )
    )
    return out.getvalue()


def patch_zip_method(data: bytes, method: int, flags: int) -> bytes:
    """Rewrite the compression method and flags of every entry (local and central)."""
    out = bytearray(data)
    for signature, method_at, flags_at in ((b"PK\x03\x04", 8, 6), (b"PK\x01\x02", 10, 8)):
        start = 0
        while (start := out.find(signature, start)) >= 0:
            struct.pack_into("<H", out, start + method_at, method)
            struct.pack_into("<H", out, start + flags_at, flags)
            start += 4
    return bytes(out)


# --- not an executable ----------------------------------------------------------------------
def test_empty_file(store: BlobStore) -> None:
    assert bad(store, b"") == "no supported executable (ELF, PE, Mach-O) found: empty file"


def test_random_bytes(store: BlobStore) -> None:
    noise = bytes((i * 197 + 89) % 251 for i in range(5000))
    assert bad(store, noise).endswith("found: unrecognised binary data")


def test_text(store: BlobStore) -> None:
    assert bad(store, b"hello, world\n" * 100).endswith("found: ASCII text")


def test_java_class_is_not_a_fat_macho(store: BlobStore) -> None:
    java = b"\xca\xfe\xba\xbe\x00\x00\x00\x41" + bytes(100)
    assert detect_executable(java) is None
    assert "Java class file" in bad(store, java)


# --- executables and their headers ---------------------------------------------------------
def test_elf_sample_is_its_own_child(store: BlobStore) -> None:
    sha = store.put_bytes(elf())
    report = unpack_sample(store, sha, name="true")
    assert report.children == [Child(sha, "true", "ELF", 0, len(TRUE_ELF), None)]
    assert report.skipped == [] and report.archives == []


@pytest.mark.parametrize("cut", [4, 16, 40, 63])
def test_truncated_elf(store: BlobStore, cut: int) -> None:
    message = bad(store, TRUE_ELF[:cut])
    if cut < 16:
        assert message == f"truncated ELF header: {cut} bytes, e_ident alone needs 16"
    else:
        assert message == f"truncated ELF header: {cut} bytes, ELF64 header needs 64"


def test_truncated_elf32(store: BlobStore) -> None:
    header = b"\x7fELF\x01\x01\x01" + bytes(40)
    assert bad(store, header) == "truncated ELF header: 47 bytes, ELF32 header needs 52"


def test_elf_unknown_class(store: BlobStore) -> None:
    assert "unknown class 9" in bad(store, b"\x7fELF\x09\x01\x01" + bytes(100))


def test_elf_shoff_beyond_eof(store: BlobStore) -> None:
    message = bad(store, bytes(elf_with(e_shoff=10 * MiB)))
    assert message == (
        f"malformed ELF section header table: e_shoff {10 * MiB} is beyond end of file "
        f"({len(TRUE_ELF)} bytes)"
    )


def test_elf_phoff_beyond_eof(store: BlobStore) -> None:
    message = bad(store, bytes(elf_with(e_phoff=1 << 40)))
    assert message.startswith(f"malformed ELF program header table: offset {1 << 40}")


def test_elf_huge_shnum(store: BlobStore) -> None:
    assert (
        bad(store, bytes(elf_with(e_shnum=0xFFF0))) == "malformed ELF header: absurd e_shnum 65520"
    )


def test_elf_huge_phnum(store: BlobStore) -> None:
    assert (
        bad(store, bytes(elf_with(e_phnum=0xFFFF))) == "malformed ELF header: absurd e_phnum 65535"
    )


def test_elf_section_table_past_eof(store: BlobStore) -> None:
    message = bad(store, bytes(elf_with(e_shnum=5000)))
    assert message.startswith("malformed ELF section header table: 5000 entries of 64 bytes")
    assert message.endswith(f"run past end of file ({len(TRUE_ELF)} bytes)")


def test_valid_pe_and_macho(store: BlobStore) -> None:
    for data, kind in ((pe(), "PE"), (macho(), "MachO"), (fat_macho(), "MachO")):
        report = unpack(store, data)
        assert [(c.format, c.depth, c.name) for c in report.children] == [(kind, 0, "sample")]


def test_pe_e_lfanew_beyond_eof(store: BlobStore) -> None:
    data = pe(e_lfanew=0x7FFFFFF0)
    assert bad(store, data) == (
        f"malformed PE: e_lfanew {0x7FFFFFF0} points beyond end of file ({len(data)} bytes)"
    )


def test_pe_missing_signature(store: BlobStore) -> None:
    assert (
        bad(store, pe(signature=b"NE\0\0"))
        == "malformed PE: no 'PE\\0\\0' signature at e_lfanew 64"
    )


def test_pe_absurd_section_count(store: BlobStore) -> None:
    assert bad(store, pe(sections=4000)) == "malformed PE: absurd NumberOfSections 4000 (max 96)"


def test_pe_truncated_dos_header(store: BlobStore) -> None:
    assert bad(store, b"MZ" + bytes(30)) == "truncated PE: 32 bytes, the DOS header alone needs 64"


def test_truncated_macho(store: BlobStore) -> None:
    assert bad(store, macho()[:20]) == "truncated Mach-O header: 20 bytes, header needs 32"


def test_macho_load_commands_past_eof(store: BlobStore) -> None:
    message = bad(store, macho(ncmds=3, sizeofcmds=4096))
    assert (
        message == "truncated Mach-O: 4096 bytes of load commands run past end of file (48 bytes)"
    )


def test_fat_macho_slice_outside_file(store: BlobStore) -> None:
    data = bytearray(fat_macho())
    struct.pack_into(">I", data, 16, 1 << 30)  # offset of the only slice
    assert "architecture 0 (offset 1073741824" in bad(store, bytes(data))


# --- archive names ----------------------------------------------------------------------------
def test_zip_slip_names_are_neutralised(store: BlobStore, tmp_path: Path) -> None:
    data = zip_of([("../../etc/passwd", elf(1)), ("/tmp/x", elf(2)), ("..\\..\\win.exe", pe())])
    report = unpack(store, data, name="slip.zip")
    assert names(report) == ["slip.zip/etc/passwd", "slip.zip/tmp/x", "slip.zip/win.exe"]
    assert reasons(report) == {
        "slip.zip/etc/passwd": "traversal name neutralised (was '../../etc/passwd')",
        "slip.zip/tmp/x": "traversal name neutralised (was '/tmp/x')",
        "slip.zip/win.exe": "traversal name neutralised (was '..\\\\..\\\\win.exe')",
    }
    for child in report.children:  # stored by hash only
        assert store.path(child.sha256).is_relative_to(tmp_path / "store")


def test_tar_links_and_devices_are_never_followed(store: BlobStore) -> None:
    data = tar_of(
        [
            tar_special("passwd", tarfile.SYMTYPE, "/etc/passwd"),
            tar_special("shadow", tarfile.LNKTYPE, "/etc/shadow"),
            tar_special("dev/sda", tarfile.BLKTYPE),
            tar_special("dev/null", tarfile.CHRTYPE),
            tar_special("pipe", tarfile.FIFOTYPE),
            tar_file("bin/true", elf()),
        ]
    )
    report = unpack(store, data)
    assert names(report) == ["sample/bin/true"]
    assert reasons(report) == {
        "sample/passwd": "symlink to '/etc/passwd' (not followed)",
        "sample/shadow": "hard link to '/etc/shadow' (not followed)",
        "sample/dev/sda": "device node (skipped)",
        "sample/dev/null": "device node (skipped)",
        "sample/pipe": "FIFO (skipped)",
    }
    assert report.archives[0]["entries"] == "6"


def test_tar_of_only_links(store: BlobStore) -> None:
    data = tar_of([tar_special("ls", tarfile.SYMTYPE, "/bin/ls")])
    assert bad(store, data) == (
        "no supported executable (ELF, PE, Mach-O) found: tar archive with 1 entry, none "
        "executable (sample/ls: symlink to '/bin/ls' (not followed))"
    )


def test_zip_symlink_entry_skipped(store: BlobStore) -> None:
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr(link, "/bin/true")
        archive.writestr("true", elf())
    report = unpack(store, buf.getvalue())
    assert names(report) == ["sample/true"]
    assert reasons(report) == {"sample/link": "symlink inside zip (not followed)"}


# --- bombs and caps -------------------------------------------------------------------------
def test_zip_bomb_entry(store: BlobStore) -> None:
    """An ELF-looking entry of 48 MiB of zeros: ~1000:1, stopped long before its end."""
    bomb = b"\x7fELF" + bytes(48 * MiB)
    report = unpack(store, zip_of([("bomb", bomb), ("true", elf())]))
    assert names(report) == ["sample/true"]
    assert reasons(report) == {
        "sample/bomb": "compression ratio above 250: possible decompression bomb"
    }


def test_zip_bomb_that_is_not_an_executable_is_never_inflated(store: BlobStore) -> None:
    report = unpack(store, zip_of([("zeros", bytes(48 * MiB)), ("true", elf())]))
    assert reasons(report) == {"sample/zeros": "not an executable (unrecognised binary data)"}
    assert names(report) == ["sample/true"]


def test_child_too_large(store: BlobStore) -> None:
    limits = UnpackLimits(max_child_bytes=16 * 1024)
    report = unpack(
        store, zip_of([("big", elf()), ("pe", pe())], zipfile.ZIP_STORED), limits=limits
    )
    assert names(report) == ["sample/pe"]
    assert reasons(report) == {"sample/big": "too large (over 16384 bytes)"}


def test_gzip_bomb(store: BlobStore) -> None:
    data = gzip.compress(b"\x7fELF" + bytes(40 * MiB), mtime=0)
    message = bad(store, data)
    assert message.startswith("no supported executable (ELF, PE, Mach-O) found: gzip archive")
    assert "archive abandoned: compression ratio above 250" in message
    assert "possible decompression bomb" in message


def test_nested_bomb_stops_at_total_budget(store: BlobStore) -> None:
    """42.zip-style: 8 distinct inner zips, each holding 8 MiB of ELF-looking zeros."""
    inner = [zip_of([(f"layer{i}", b"\x7fELF" + bytes(8 * MiB))]) for i in range(8)]
    outer = zip_of([("z", elf())] + [(f"{i}.zip", data) for i, data in enumerate(inner)])
    limits = UnpackLimits(max_total_bytes=12 * MiB)
    report = unpack(store, outer, limits=limits)
    assert names(report) == ["sample/z"]
    skipped = reasons(report)
    assert skipped["sample"] == (
        f"unpacking stopped: total decompressed size limit reached ({12 * MiB} bytes)"
    )
    ratio = "compression ratio above 250: possible decompression bomb"
    assert [skipped[f"sample/{i}.zip/layer{i}"] for i in range(5)] == [ratio] * 5
    opened = [archive["name"] for archive in report.archives]
    assert opened[:6] == ["sample"] + [f"sample/{i}.zip" for i in range(5)]
    assert "sample/7.zip" not in opened  # the budget ran out before the last inner zip


def test_nested_bomb_without_executable_is_bad_sample(store: BlobStore) -> None:
    inner = zip_of([("payload", b"\x7fELF" + bytes(8 * MiB))])
    outer = zip_of([(f"{i}.zip", inner) for i in range(16)])
    report_or_error = bad(store, outer)
    # 16 identical copies: opened once, the rest are duplicates; the payload is a bomb.
    assert "zip archive with 16 entries, none executable" in report_or_error
    assert "sample/0.zip/payload: compression ratio above 250" in report_or_error


def test_nested_too_deep(store: BlobStore) -> None:
    data = elf()
    for level in range(4):  # 4 nested zips, sample included: one level too many
        data = zip_of([(f"level{level}", data)])
    message = bad(store, data)
    assert "sample/level3/level2/level1: nested too deep (zip at depth 3, limit 3)" in message


def test_nesting_at_the_depth_limit(store: BlobStore) -> None:
    data = elf()
    for level in range(3):
        data = zip_of([(f"level{level}", data)])
    report = unpack(store, data, name="outer.zip")
    (child,) = report.children
    assert child.name == "outer.zip/level2/level1/level0" and child.depth == 3
    assert [a["name"] for a in report.archives] == [
        "outer.zip",
        "outer.zip/level2",
        "outer.zip/level2/level1",
    ]
    assert child.parent_sha256 == report.archives[-1]["sha256"]


def test_too_many_entries(store: BlobStore) -> None:
    entries = [(f"notes/{i}.txt", b"x") for i in range(1100)] + [("true", elf())]
    message = bad(store, zip_of(entries, zipfile.ZIP_STORED))
    assert "zip archive with 1000 entries, none executable" in message
    assert "sample: unpacking stopped: too many archive entries (limit 1000)" in message


def test_too_many_children(store: BlobStore) -> None:
    data = zip_of([(f"e{i}", elf(i)) for i in range(4)])
    report = unpack(store, data, limits=UnpackLimits(max_children=2))
    assert names(report) == ["sample/e0", "sample/e1"]
    assert reasons(report) == {
        "sample/e2": "too many executables (limit 2)",
        "sample/e3": "too many executables (limit 2)",
    }


def test_huge_tar_header_is_refused(store: BlobStore) -> None:
    info = tarfile.TarInfo("true")
    info.pax_headers = {"comment": "A" * (2 * MiB)}
    data = tar_of([(info, elf())], mode="w")
    message = bad(store, data)
    assert "archive abandoned: archive header larger than 1048576 bytes" in message


# --- passwords ------------------------------------------------------------------------------
@pytest.mark.parametrize("password", ["infected", "virus"])
def test_zipcrypto_with_known_password(store: BlobStore, password: str) -> None:
    data = zipcrypto([("a.elf", elf()), ("b.exe", pe())], password.encode())
    with zipfile.ZipFile(io.BytesIO(data)) as archive:  # the builder itself is sound
        assert archive.read("a.elf", pwd=password.encode()) == elf()
    report = unpack(store, data)
    assert [(c.name, c.format) for c in report.children] == [
        ("sample/a.elf", "ELF"),
        ("sample/b.exe", "PE"),
    ]
    assert report.skipped == []


def test_zipcrypto_with_unknown_password(store: BlobStore) -> None:
    data = zipcrypto([("a.elf", elf())], b"s3cret-nobody-knows")
    assert bad(store, data) == (
        "no supported executable (ELF, PE, Mach-O) found: zip archive with 1 entry, none "
        "executable (sample/a.elf: bad password: encrypted, none of the 4 known passwords "
        "worked)"
    )


def test_aes_zip_is_reported_unsupported(store: BlobStore) -> None:
    aes = patch_zip_method(zip_of([("a.elf", elf())]), method=99, flags=1)
    message = bad(store, aes)
    assert message.endswith("(sample/a.elf: AES-encrypted zip entry: unsupported)")


def test_zip_unsupported_method(store: BlobStore) -> None:
    deflate64 = patch_zip_method(zip_of([("a", elf(1))]), method=9, flags=0)
    report = unpack(store, zip_of([("inner.zip", deflate64), ("b", elf())]))
    assert names(report) == ["sample/b"]
    assert reasons(report) == {"sample/inner.zip/a": "unsupported zip compression method 9"}


def test_7z_plain_encrypted_and_header_encrypted(store: BlobStore) -> None:
    plain = seven_zip([("bin/true", elf()), ("readme.txt", b"hello\n")])
    locked = seven_zip([("true", elf(1))], password="infected")
    hidden = seven_zip([("true", elf(2))], password="malware", header_encryption=True)
    report = unpack(store, plain, name="plain.7z")
    assert names(report) == ["plain.7z/bin/true"]
    assert reasons(report) == {"plain.7z/readme.txt": "not an executable (ASCII text)"}
    assert report.archives[0]["type"] == "7z" and report.archives[0]["entries"] == "2"
    assert names(unpack(store, locked)) == ["sample/true"]
    assert names(unpack(store, hidden)) == ["sample/true"]


def test_7z_unknown_password(store: BlobStore) -> None:
    locked = seven_zip([("true", elf())], password="hunter2")
    hidden = seven_zip([("true", elf())], password="hunter2", header_encryption=True)
    assert bad(store, locked) == (
        "bad password: encrypted 7z archive, none of the 4 known passwords worked"
    )
    assert bad(store, hidden) == (
        "bad password: 7z archive with encrypted header, none of the 4 known passwords worked"
    )


def test_encrypted_rar_opens_in_the_sandboxed_child(
    store: BlobStore, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """unar and lsar run inside the sandboxed unpack child (GNUstep needs the passwd entry
    the sandbox's view gives user 65534): encrypted entries, and encrypted headers."""
    work = tmp_path_factory.mktemp("rar")
    entries = container_samples.rar(work, {"bin/true": TRUE_ELF}, "-pinfected", out="e.rar")
    headers = container_samples.rar(work, {"bin/true": TRUE_ELF}, "-hpmalware", out="h.rar")
    assert names(unpack(store, entries, name="e.rar")) == ["e.rar/bin/true"]
    assert names(unpack(store, headers, name="h.rar")) == ["h.rar/bin/true"]


# --- corrupt archives ----------------------------------------------------------------------
def test_corrupt_zip_directory(store: BlobStore) -> None:
    data = zip_of([("true", elf())])
    assert bad(store, data[:-30]) == "corrupt zip archive: File is not a zip file"


def test_corrupt_zip_entry(store: BlobStore) -> None:
    data = bytearray(zip_of([("a", elf()), ("b", elf(1))], zipfile.ZIP_STORED))
    data[5000] ^= 0xFF  # inside entry "a"
    report = unpack(store, bytes(data))
    assert names(report) == ["sample/b"]
    assert reasons(report) == {"sample/a": "corrupt zip entry: Bad CRC-32 for file 'a'"}


def test_zip_central_directory_too_large(store: BlobStore) -> None:
    data = bytearray(zip_of([("true", elf())]))
    struct.pack_into("<I", data, data.rfind(b"PK\x05\x06") + 12, 100 * MiB)
    assert bad(store, bytes(data)).endswith(
        f"(sample: archive abandoned: zip central directory of {100 * MiB} bytes is too "
        f"large (limit {8 * MiB}))"
    )


def test_zip_entry_declared_size_lies(store: BlobStore) -> None:
    """The local and central headers claim 100 bytes; the data is a whole ELF."""
    data = bytearray(zip_of([("a", elf())], zipfile.ZIP_STORED))
    for signature, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        struct.pack_into("<I", data, data.find(signature) + at, 100)
    message = bad(store, bytes(data))
    assert "sample/a: truncated ELF header" not in message
    assert "zip archive with 1 entry, none executable (sample/a: corrupt zip entry" in message


def test_truncated_tar_gz(store: BlobStore) -> None:
    noise = random.Random(1).randbytes(200_000)  # incompressible: the cut lands in it
    data = tar_of([tar_file("true", elf()), tar_file("noise", noise)], mode="w:gz")
    report = unpack(store, data[: len(data) * 2 // 3])
    assert names(report) == ["sample/true"]
    assert reasons(report)["sample"].startswith("corrupt tar.gz archive after 2 entries: ")
    assert bad(store, data[:40]).startswith("corrupt gzip stream: ")


def test_corrupt_7z(store: BlobStore) -> None:
    data = seven_zip([("true", elf())])
    assert bad(store, data[:100]).startswith("corrupt 7z archive")


# --- formats ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "kind"), [("w", "tar"), ("w:gz", "tar.gz"), ("w:bz2", "tar.bz2"), ("w:xz", "tar.xz")]
)
def test_tarballs(store: BlobStore, mode: str, kind: str) -> None:
    data = tar_of([tar_file("pkg/bin/true", elf()), tar_file("pkg/README", b"docs\n")], mode)
    report = unpack(store, data, name=f"pkg.{kind}")
    assert names(report) == [f"pkg.{kind}/pkg/bin/true"]
    assert report.children[0].depth == 1
    assert reasons(report) == {f"pkg.{kind}/pkg/README": "not an executable (ASCII text)"}
    assert report.archives == [
        {"name": f"pkg.{kind}", "type": kind, "entries": "2", "sha256": store.put_bytes(data)}
    ]


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_bare_compressed_streams(store: BlobStore, kind: str) -> None:
    compress = {
        "gz": lambda d: gzip.compress(d, mtime=0),
        "bz2": bz2.compress,
        "xz": lzma.compress,
    }[kind]
    report = unpack(store, compress(elf()), name=f"true.{kind}")
    assert names(report) == [f"true.{kind}/true"]
    assert report.children[0].sha256 == store.put_bytes(elf())


def test_gzip_stored_name_is_sanitised(store: BlobStore) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # gzip.GzipFile would strip the path
    body = packer.compress(elf()) + packer.flush()
    header = b"\x1f\x8b\x08\x08" + bytes(6) + b"../../evil\0"
    data = header + body + struct.pack("<II", zlib.crc32(elf()), len(elf()))
    report = unpack(store, data, name="x.gz")
    assert names(report) == ["x.gz/evil"]
    assert reasons(report) == {"x.gz/evil": "traversal name neutralised (was '../../evil')"}


def test_mixed_nested_archive(store: BlobStore) -> None:
    inner_tgz = tar_of([tar_file("win/app.exe", pe())], mode="w:gz")
    inner_zip = zip_of([("mac/app", fat_macho()), ("notes.txt", b"nothing")])
    outer = zip_of(
        [
            ("bin/true", elf()),
            ("README", b"# readme\n"),
            ("win.tgz", inner_tgz),
            ("mac.zip", inner_zip),
        ]
    )
    report = unpack(store, outer, name="mix.zip")
    outer_sha = store.put_bytes(outer)
    tgz_sha, zip_sha = store.put_bytes(inner_tgz), store.put_bytes(inner_zip)
    assert [(c.name, c.format, c.depth, c.parent_sha256) for c in report.children] == [
        ("mix.zip/bin/true", "ELF", 1, outer_sha),
        ("mix.zip/win.tgz/win/app.exe", "PE", 2, tgz_sha),
        ("mix.zip/mac.zip/mac/app", "MachO", 2, zip_sha),
    ]
    assert reasons(report) == {
        "mix.zip/README": "not an executable (ASCII text)",
        "mix.zip/mac.zip/notes.txt": "not an executable (ASCII text)",
    }
    assert [(a["name"], a["type"], a["entries"]) for a in report.archives] == [
        ("mix.zip", "zip", "4"),
        ("mix.zip/win.tgz", "tar.gz", "1"),
        ("mix.zip/mac.zip", "zip", "2"),
    ]
    for child in report.children:
        assert store.read_bytes(child.sha256)[:2] in (b"\x7fE", b"MZ", b"\xca\xfe")


def test_duplicates_are_deduplicated(store: BlobStore) -> None:
    inner = zip_of([("again/true", elf())])
    report = unpack(store, zip_of([("a", elf()), ("b", elf()), ("inner.zip", inner)]))
    assert names(report) == ["sample/a"]
    assert reasons(report) == {
        "sample/b": "duplicate of sample/a",
        "sample/inner.zip/again/true": "duplicate of sample/a",
    }


def test_malformed_executable_inside_archive(store: BlobStore) -> None:
    only = zip_of([("broken", TRUE_ELF[:30])])
    assert (
        bad(store, only) == "sample/broken: truncated ELF header: 30 bytes, ELF64 header needs 64"
    )
    report = unpack(store, zip_of([("broken", pe(sections=500)), ("true", elf())]))
    assert names(report) == ["sample/true"]
    assert reasons(report) == {
        "sample/broken": "malformed PE: absurd NumberOfSections 500 (max 96)"
    }


def test_archive_of_text_only(store: BlobStore) -> None:
    data = zip_of([("a.txt", b"a"), ("b.pdf", b"%PDF-1.4"), ("c.sh", b"#!/bin/sh\necho\n")])
    assert bad(store, data) == (
        "no supported executable (ELF, PE, Mach-O) found: zip archive with 3 entries, none "
        "executable (sample/a.txt: not an executable (ASCII text); sample/b.pdf: not an "
        "executable (PDF document); sample/c.sh: not an executable (script (#!/bin/sh)))"
    )


def test_detectors_on_heads() -> None:
    assert detect_archive(zip_of([])) == "zip"
    assert detect_archive(tar_of([tar_file("x", b"x")])) == "tar"
    assert detect_archive(b"BZh0") is None
    assert detect_executable(b"\x7fELF") == "ELF"
    assert detect_executable(b"\xfe\xed\xfa\xce") == "MachO"
    check_executable("/bin/true")


def test_7z_bomb_and_symlink(store: BlobStore, tmp_path: Path) -> None:
    link = tmp_path / "cwd" / "passwd"
    link.symlink_to("/etc/passwd")
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as archive:
        archive.write(link, "passwd")  # stored as a symlink, not dereferenced
        archive.writestr(elf(), "true")
        archive.writestr(b"\x7fELF" + bytes(16 * MiB), "bomb")
    link.unlink()
    report = unpack(store, buf.getvalue(), name="b.7z")
    assert names(report) == ["b.7z/true"]
    skipped = reasons(report)
    assert skipped["b.7z/passwd"] == "symlink inside 7z (not followed)"
    assert skipped["b.7z"].startswith("archive abandoned: compression ratio above 250")
    assert len(skipped) == 2


def test_tar_traversal_and_odd_names(store: BlobStore) -> None:
    data = tar_of(
        [
            tar_file("../../../etc/cron.d/evil", elf(1)),
            tar_file("/usr/bin/abs", elf(2)),
            tar_file("./a/./b/../c\x07bell", elf(3)),
        ]
    )
    report = unpack(store, data, name="t.tar")
    assert names(report) == ["t.tar/etc/cron.d/evil", "t.tar/usr/bin/abs", "t.tar/a/b/c?bell"]
    assert reasons(report) == {
        "t.tar/etc/cron.d/evil": "traversal name neutralised (was '../../../etc/cron.d/evil')",
        "t.tar/usr/bin/abs": "traversal name neutralised (was '/usr/bin/abs')",
        "t.tar/a/b/c?bell": "traversal name neutralised (was './a/./b/../c\\x07bell')",
    }


def test_zip_directories_are_silent(store: BlobStore) -> None:
    data = zip_of([("bin/", b""), ("bin/true", elf())])
    report = unpack(store, data)
    assert names(report) == ["sample/bin/true"] and report.skipped == []
    assert report.archives[0]["entries"] == "2"


def test_upx_marker_without_upx_keeps_packed_file(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "cwd"))  # an empty directory: no upx here
    packed = elf() + b"UPX!"
    report = unpack(store, packed, name="p")
    assert [(c.name, c.sha256, c.parent_sha256) for c in report.children] == [
        ("p", store.put_bytes(packed), None)
    ]
    assert reasons(report) == {"p": "UPX-packed: upx is not installed, the packed file is analysed"}


# --- UPX -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upx_packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """(/bin/ls, the same packed by Debian's upx-ucl): a real UPX-packed executable."""
    work = tmp_path_factory.mktemp("upx")
    original = work / "ls"
    original.write_bytes(Path("/bin/ls").read_bytes())
    original.chmod(0o755)  # upx packs executables only
    subprocess.run(["upx", "-q", "-q", "-o", str(work / "packed"), str(original)],
                   check=True, capture_output=True)
    return original.read_bytes(), (work / "packed").read_bytes()


def test_upx_packed_program_is_replaced_by_its_unpacked_form(
    store: BlobStore, upx_packed: tuple[bytes, bytes]
) -> None:
    """upx -d runs inside the sandboxed unpack child: the child analysed is the program
    as it was before packing, byte for byte."""
    original, packed = upx_packed
    assert b"UPX!" in packed and packed != original
    report = unpack(store, packed, name="packed")
    [child] = report.children
    assert child.sha256 == hashlib.sha256(original).hexdigest()
    assert (child.format, child.parent_sha256) == ("ELF", store.put_bytes(packed))
    assert reasons(report) == {
        "packed": f"UPX-packed: replaced by its unpacked form {child.sha256}"
    }


def test_damaged_upx_program_is_analysed_as_it_is(
    store: BlobStore, upx_packed: tuple[bytes, bytes]
) -> None:
    """Packed data overwritten in the middle: upx -d refuses it, and the packed file
    itself is analysed with upx's reason in the report, never a crash."""
    damaged = bytearray(upx_packed[1])
    middle = len(damaged) // 2
    damaged[middle : middle + 64] = b"\xff" * 64
    report = unpack(store, bytes(damaged), name="damaged")
    [child] = report.children
    assert child.sha256 == store.put_bytes(bytes(damaged))
    reason = reasons(report)["damaged"]
    assert reason.startswith("UPX-packed: upx -d failed (") and reason.endswith(
        "), the packed file is analysed"), reason
