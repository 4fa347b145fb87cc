"""The unpack cache's key: everything a finished unpack's result depends on.

An unpack of the same bytes, under the same name and limits, by the same unpacking code,
archive libraries and external tools, finds the same children. The key is therefore made
of: the sample's sha256, the name it was submitted under (it names the children), the
limits, a digest of this package's source, the versions of the libraries it reads
archives with, and which external tools it calls are installed (unar: RAR 5 and
encrypted RAR headers; upx: packed executables). Any of them changing is a new key, so
a cached result is never reused across an upgrade; the sample is unpacked again.
What the key cannot hold is time: an unpack that ran out of time somewhere
(UnpackReport.time_limited) is not stored at all (activities/unpack.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
from importlib import metadata
from pathlib import Path

from unpacking.extract import UnpackLimits
from unpacking.rar_unar import unar_tools

UNPACK_CACHE_KIND = "unpack-1"
LIBRARIES = ("py7zr", "libarchive-c", "olefile", "cryptography")


def unpack_key(sha256: str, name: str | None, limits: UnpackLimits) -> str:
    material = {
        "sample": sha256, "name": name or "", "limits": dataclasses.asdict(limits),
        "code": _code_identity(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


@functools.cache
def _code_identity() -> dict[str, object]:
    source = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        source.update(path.name.encode() + b"\0" + path.read_bytes())
    libraries = {}
    for library in LIBRARIES:
        try:
            libraries[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            libraries[library] = ""
    import libarchive.ffi  # the C library the binding loaded

    return {"source": source.hexdigest(), "libraries": libraries,
            "libarchive": libarchive.ffi.version_number(), "unar": unar_tools() is not None,
            "upx": bool(shutil.which("upx") or shutil.which("upx-ucl"))}
