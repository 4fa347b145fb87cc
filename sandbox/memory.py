"""Inside a child: did its address space come close to the RLIMIT_AS it was given?

Native code (angr's, libarchive's) out of address space often aborts or fails oddly
before Python sees a MemoryError; the children ask this to name the real cause."""

from __future__ import annotations

import resource
from pathlib import Path


def near_memory_limit(fraction: float = 0.9) -> bool:
    """Whether this process's peak address space came close to its RLIMIT_AS."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return False
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("VmPeak:"):
            return int(line.split()[1]) * 1024 >= fraction * soft
    return False
