"""Lift one shared object in its own process (angr holds the GIL and global state).

Usage: python -m festive.reference.lift_one LIB.so OUT.json.gz
Writes the lift_binary output, plus the exported function symbols read from .dynsym
(the labels the index trusts), as gzip JSON. Run nice'd with a timeout by build.py.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import time
from pathlib import Path


def exported_functions(path: str) -> dict[str, list[str]]:
    """Map hex address -> defined, exported FUNC/IFUNC names in .dynsym (aliases kept)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    exports: dict[str, list[str]] = {}
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        dynsym = elf.get_section_by_name(".dynsym")
        if not isinstance(dynsym, SymbolTableSection):
            return exports
        for sym in dynsym.iter_symbols():
            info = sym["st_info"]
            if info["type"] not in ("STT_FUNC", "STT_GNU_IFUNC"):
                continue
            if info["bind"] not in ("STB_GLOBAL", "STB_WEAK"):
                continue
            if sym["st_shndx"] == "SHN_UNDEF" or sym["st_other"]["visibility"] != "STV_DEFAULT":
                continue
            # Raw st_value: on armhf a Thumb function's value carries the low bit, as angr's does.
            exports.setdefault(hex(sym["st_value"]), []).append(sym.name)
    return exports


def main() -> None:
    src, out = sys.argv[1], Path(sys.argv[2])
    from lifting.angr_lift import lift_binary

    started = time.monotonic()
    lift = lift_binary(src)
    lift["reference_exports"] = exported_functions(src)
    lift["reference_lift_seconds"] = round(time.monotonic() - started, 2)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        json.dump(lift, fh, separators=(",", ":"))
    tmp.rename(out)
    print(json.dumps({"functions": len(lift["functions"]),
                      "seconds": lift["reference_lift_seconds"]}))


if __name__ == "__main__":
    main()
