"""Inputs that bench/fuzz_unpack.py (or reading its results) showed to misbehave, minimised.

Each was answered with BadSample already, but through the unpacker's last-resort guard
("unreadable <kind> archive (<ExceptionType>: ...)"): a reader raised something it did not
mean to. The reader now answers them itself with a reason about the file.
See bench/fuzz_unpack.md for how each was found.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from store.blobs_local import LocalBlobStore
from tests.container_samples import vint
from unpacking.containers import rar_lock
from unpacking.extract import BadSample, unpack_sample
from unpacking.rar_unar import RarLock


def rar5_huge_data_area() -> bytes:
    """RAR 5 signature and a main archive header whose data area claims 2**62 bytes.
    (Fuzz finding: the RAR 5 header walk seeked past any offset the OS accepts; OSError.)"""
    body = vint(1) + vint(0x2) + vint(1 << 62) + vint(0)  # type, flags, data size, flags
    sized = vint(len(body)) + body
    return b"Rar!\x1a\x07\x01\x00" + struct.pack("<I", zlib.crc32(sized)) + sized


def zip64_locator_past_the_end() -> bytes:
    """A zip whose ZIP64 end-of-directory locator points at 2**63 + 5.
    (_zip_directory_size passed that to seek(); ValueError.)"""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("a", b"x")
    data = bytearray(buf.getvalue())
    at = data.rfind(b"PK\x05\x06")
    struct.pack_into("<I", data, at + 12, 0xFFFFFFFF)
    data[at - 20 : at] = b"PK\x06\x07" + bytes(4) + struct.pack("<Q", (1 << 63) + 5) + bytes(4)
    return bytes(data)


CASES = {
    "rar5-huge-data-area": (
        rar5_huge_data_area,
        "no supported executable (ELF, PE, Mach-O) found: rar archive with 0 entries",
    ),
    "zip64-locator-past-the-end": (zip64_locator_past_the_end, "corrupt zip archive"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fuzz_regression(tmp_path: Path, case: str) -> None:
    build, expected = CASES[case]
    blobs = LocalBlobStore(tmp_path / "store")
    with pytest.raises(BadSample) as info:
        unpack_sample(blobs, blobs.put_bytes(build()), name=case)
    message = str(info.value)
    assert message.startswith(expected), message
    assert "unreadable" not in message and "Error:" not in message


def test_rar5_scanner_stops_at_a_data_area_past_the_end(tmp_path: Path) -> None:
    path = tmp_path / "huge.rar"
    path.write_bytes(rar5_huge_data_area())
    assert rar_lock(path) == RarLock(False, frozenset())
