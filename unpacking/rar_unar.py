"""Encrypted RAR through unar (The Unarchiver, Debian's `unar` package): the password list.

libarchive cannot decrypt RAR, so a RAR with an encrypted entry, or with encrypted
headers, is read here instead: `lsar -j` lists it (with each known password in turn when
its headers are encrypted), then every entry is extracted on its own by `unar -i`, one
process per entry, into a fresh spool directory under a file-size limit, and handed to
the visitor through the Meter like any other member. The password that worked last is
tried first for the next entry.

Both tools parse hostile bytes: they run through sandbox.limited (memory, CPU and
file-size limits, a wall-clock timeout), and in the worker inside the sandboxed unpack
child, whose namespaces they inherit. Nothing here follows a link or trusts a name: the
entry's bytes are read back from the one regular file unar wrote, whatever it called it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import Limits, limited
from unpacking.archives import (
    CHUNK,
    ArchiveLimit,
    CorruptArchive,
    Member,
    Meter,
    Metered,
    TimeLimit,
    Visitor,
)

__all__ = ["RarLock", "read_encrypted_rar", "unar_tools"]

# one lsar listing or one entry's extraction; the whole archive (every entry, every
# password tried) has the meter's time (UnpackLimits.archive_seconds)
TOOL_TIMEOUT_S = 60
TOOL_MEMORY = 2 << 30
MAX_LISTING = 64 << 20  # lsar's JSON for a hostile archive stops being read here


@dataclass(frozen=True)
class RarLock:
    """What of a RAR is encrypted, as its own headers say (unpacking.containers)."""

    headers: bool  # the headers themselves: nothing can be listed without the password
    names: frozenset[str]  # the encrypted file entries (when the headers are readable)

    @property
    def locked(self) -> bool:
        return self.headers or bool(self.names)


def unar_tools() -> tuple[str, str] | None:
    """(lsar, unar) when both are installed, else None."""
    lsar, unar = shutil.which("lsar"), shutil.which("unar")
    return (lsar, unar) if lsar and unar else None


def read_encrypted_rar(
    path: Path,
    lock: RarLock,
    meter: Meter,
    visit: Visitor,
    passwords: tuple[str, ...],
    spool_dir: Path,
    max_member_bytes: int,
) -> str:
    """Visit every entry of the encrypted RAR at `path`, decrypted with the first known
    password that works; returns "rar" or "rar5". An entry no password opens is reported
    as a problem member; encrypted headers no password opens raise CorruptArchive (there
    is nothing to name). The caller checks unar_tools() and `passwords` first."""
    tools = unar_tools()
    if tools is None or not passwords:
        raise ValueError("read_encrypted_rar needs lsar, unar and at least one password")
    lsar, unar = tools
    order = list(passwords)
    listing = _listing(lsar, path, order if lock.headers else [""], meter)
    if listing is None:
        raise CorruptArchive(
            f"RAR archive with encrypted headers: none of the {len(passwords)} known "
            "passwords worked"
        )
    contents, header_password = listing
    if header_password:  # the headers' password decrypts the entries too, most likely
        order.remove(header_password)
        order.insert(0, header_password)
    label = "rar5" if "5" in str(contents.get("lsarFormatName", "")) else "rar"
    for entry in contents.get("lsarContents") or []:
        if not isinstance(entry, dict):
            raise CorruptArchive(f"corrupt {label} archive: unexpected lsar listing")
        meter.entry()
        _visit(unar, path, entry, meter, visit, order, spool_dir, max_member_bytes)
    return label


def _listing(
    lsar: str, path: Path, passwords: list[str], meter: Meter
) -> tuple[dict[str, Any], str] | None:
    """(lsar's JSON, the password that listed it) or None when none did. An empty
    password lists an archive whose headers are not encrypted."""
    for password in passwords:
        argv = [lsar, "-j", *(("-p", password) if password else ()), str(path)]
        done = _run(argv, meter, file_bytes=0)
        if len(done.stdout) > MAX_LISTING:
            raise ArchiveLimit(f"RAR listing larger than {MAX_LISTING} bytes")
        try:
            contents = json.loads(done.stdout.decode("utf-8", "surrogateescape"))
        except ValueError:
            contents = None
        if isinstance(contents, dict) and not contents.get("lsarError") and done.returncode == 0:
            return contents, password
        if not password:  # readable headers that lsar still cannot list
            why = _last_line(done.stdout + done.stderr) or f"lsar exited {done.returncode}"
            raise CorruptArchive(f"corrupt RAR archive: {why}")
    return None


def _visit(
    unar: str,
    path: Path,
    entry: dict[str, Any],
    meter: Meter,
    visit: Visitor,
    order: list[str],
    spool_dir: Path,
    max_member_bytes: int,
) -> None:
    name = str(entry.get("XADFileName", ""))
    if entry.get("XADIsDirectory"):
        visit(Member(name))
        return
    if entry.get("XADIsLink"):
        target = str(entry.get("XADLinkDestination", ""))
        visit(Member(name, problem=f"symlink to {target!r} (not followed)"))
        return
    index = entry.get("XADIndex")
    if not isinstance(index, int):
        raise CorruptArchive("corrupt RAR archive: an entry without an index")
    # the file this entry may become: within the member cap and what the meter allows
    limit = min(max_member_bytes, max(meter.allowance - meter.produced, 0)) + 1
    why = ""
    for password in list(order) if entry.get("XADIsEncrypted") else [""]:
        with tempfile.TemporaryDirectory(dir=spool_dir) as scratch:
            argv = [unar, "-f", "-D", "-nr", "-i", "-o", scratch,
                    *(("-p", password) if password else ()), str(path), str(index)]
            done = _run(argv, meter, file_bytes=limit)
            files = [p for p in Path(scratch).rglob("*") if p.is_file() and not p.is_symlink()]
            if done.returncode == 0 and len(files) == 1:
                if password:
                    order.remove(password)
                    order.insert(0, password)
                _hand_over(files[0], name, meter, visit)
                return
            if done.returncode == -signal.SIGXFSZ:  # past the file-size limit
                raise ArchiveLimit(f"RAR entry {name!r} larger than {limit - 1} bytes: "
                                   "possible decompression bomb")
            why = _reason(done.stdout + done.stderr) or f"unar exited {done.returncode}"
    if entry.get("XADIsEncrypted"):
        visit(Member(name, problem=f"encrypted RAR entry: none of the {len(order)} known "
                                   f"passwords worked (unar: {why})"))  # fmt: skip
    else:
        raise CorruptArchive(f"corrupt RAR archive: {name!r}: {why}")


def _hand_over(file: Path, name: str, meter: Meter, visit: Visitor) -> None:
    """The extracted bytes to the visitor, every byte charged to the meter."""
    with open(file, "rb") as handle:
        stream = Metered(handle, meter)
        visit(Member(name, stream=stream))  # type: ignore[arg-type]
        while stream.read(CHUNK):
            pass


def _run(argv: list[str], meter: Meter, file_bytes: int) -> subprocess.CompletedProcess[bytes]:
    remaining = meter.deadline - time.monotonic()
    if remaining <= 0:
        raise TimeLimit(f"encrypted RAR took longer than {meter.seconds:g} s to read")
    timeout = min(TOOL_TIMEOUT_S, remaining)
    try:
        return subprocess.run(
            limited(argv, Limits(memory_bytes=TOOL_MEMORY, time_s=timeout,
                                 file_bytes=file_bytes)),
            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
    except subprocess.TimeoutExpired as exc:
        raise TimeLimit(f"{Path(argv[0]).name} took longer than {timeout:.0f} s") from exc


def _reason(output: bytes) -> str:
    """unar's reason for a failed entry, "Wrong checksum" in "  name... Failed! (Wrong
    checksum)": not the whole line, which names the entry and the spool directory."""
    found = re.findall(r"Failed! \(([^()\n]{1,200})\)", output.decode("utf-8", "replace"))
    return found[-1] if found else ""


def _last_line(output: bytes) -> str:
    lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines()]
    return next((line for line in reversed(lines) if line), "")[:200]
