"""Turn one stored sample into the executables the lifter should see.

A sample is either an executable (it is its own only child) or an archive that is opened,
recursively, under the caps in UnpackLimits. Every executable found is written into the
blob store (addressed by its hash, so archive names never choose a path) and reported as
a Child; everything else is reported in `skipped` with a reason a person can act on.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from common.failures import is_storage_full
from sandbox import Limits, limited
from store.blobs import BlobStore, BlobTooLarge
from unpacking.archives import (
    CHUNK,
    ArchiveLimit,
    Budget,
    CorruptArchive,
    EntryLimit,
    Member,
    Meter,
    StopUnpacking,
    TimeLimit,
    describe,
    is_traversal,
    read_archive,
    read_up_to,
    sanitize_name,
)
from unpacking.containers import CONTAINER_KINDS, read_container
from unpacking.formats import (
    ARCHIVE_HEAD_BYTES,
    BadSample,
    check_executable,
    detect_archive,
    detect_executable,
)

__all__ = ["BadSample", "Child", "UnpackLimits", "UnpackReport", "unpack_sample"]

MiB = 1 << 20
HEAD = ARCHIVE_HEAD_BYTES  # enough for every magic number checked, ISO 9660's at 0x8001
UPX_TIMEOUT_S = 60
UPX_TIMED_OUT = f"UPX-packed: upx -d timed out after {UPX_TIMEOUT_S} s"
NOTHING_FOUND = "no supported executable (ELF, PE, Mach-O) found"


@dataclass(frozen=True)
class UnpackLimits:
    max_depth: int = 3  # archive nesting levels opened, the sample itself included
    max_children: int = 64
    max_entries: int = 1000  # archive members seen, all archives together
    max_total_bytes: int = 512 * MiB  # decompressed bytes produced, all archives together
    max_child_bytes: int = 200 * MiB
    max_ratio: float = 250.0  # decompressed / compressed, per archive and per zip entry
    # one archive read with external tools or decrypted here (encrypted RAR): every
    # entry, every password tried
    archive_seconds: float = 300.0
    passwords: tuple[str, ...] = ("infected", "malware", "virus", "password")


@dataclass
class Child:
    sha256: str
    name: str  # sanitised display path, e.g. "outer.zip/inner.tar/bin/ls"
    format: str  # "ELF", "PE" or "MachO"
    depth: int  # 0 for the sample itself, 1 for a member of the sample, ...
    size: int
    parent_sha256: str | None  # the archive it came out of


@dataclass
class UnpackReport:
    children: list[Child] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"name", "reason"}
    # one per archive opened: {"name", "type", "entries", "sha256"}
    archives: list[dict[str, str]] = field(default_factory=list)
    # something was skipped for taking too long (TimeLimit, upx): on a less busy machine
    # the same sample may unpack to more, so this report is not kept for reuse
    time_limited: bool = False


def unpack_sample(
    blobs: BlobStore,
    sha256: str,
    limits: UnpackLimits = UnpackLimits(),  # noqa: B008 - frozen, safe as a default
    *,
    name: str | None = None,
) -> UnpackReport:
    """Find every executable in the stored sample `sha256`.

    `name` is the uploaded file name, used only as the first component of display paths
    (default "sample"). Raises BadSample when no usable executable comes out.
    """
    return _Unpacker(blobs, limits).run(sha256, sanitize_name(name) if name else "sample")


class _Unpacker:
    def __init__(self, blobs: BlobStore, limits: UnpackLimits) -> None:
        self.blobs, self.limits = blobs, limits
        self.budget = Budget(limits.max_total_bytes, limits.max_entries)
        self.report = UnpackReport()
        self.seen: dict[str, str] = {}  # sha256 -> display name of its first occurrence
        self.malformed: list[tuple[str, str]] = []  # (display name, reason)
        self.top_error: str | None = None

    # --- the sample ------------------------------------------------------------------------
    def run(self, sha256: str, label: str) -> UnpackReport:
        with self.blobs.local_copy(sha256) as path:
            with open(path, "rb") as handle:
                head = handle.read(HEAD)
            kind = detect_executable(head)
            if kind is not None:
                check_executable(path)  # a malformed sample is the sample's problem
                size = path.stat().st_size
        self.seen[sha256] = label
        if kind is not None:
            self._add_child(sha256, label, kind, 0, size, None)
            return self.report
        archive = detect_archive(head)
        if archive is None:
            raise BadSample(f"{NOTHING_FOUND}: {describe(head)}")
        try:
            self._open_archive(sha256, label, archive, depth=0)
        except StopUnpacking as exc:
            self._skip(label, f"unpacking stopped: {exc}")
        if not self.report.children:
            raise BadSample(self._nothing_found())
        return self.report

    def _nothing_found(self) -> str:
        if len(self.malformed) == 1:
            name, reason = self.malformed[0]
            return f"{name}: {reason}"
        if self.top_error is not None:
            return self.top_error
        top = self.report.archives[0]
        count = int(top["entries"])
        summary = f"{top['type']} archive with {count} entr{'y' if count == 1 else 'ies'}"
        archives = {archive["name"] for archive in self.report.archives}
        # Reasons that ended a whole archive (bomb, cap, corruption) matter most: first.
        skipped = sorted(self.report.skipped, key=lambda s: s["name"] not in archives)
        reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped[:3])
        more = f"; {len(self.report.skipped) - 3} more" if len(self.report.skipped) > 3 else ""
        detail = f" ({reasons}{more})" if reasons else ""
        return f"{NOTHING_FOUND}: {summary}, none executable{detail}"

    # --- archives --------------------------------------------------------------------------
    def _open_archive(self, sha256: str, label: str, kind: str, depth: int) -> None:
        """Visit the members of one archive; its own failures stay its own."""
        entry = {"name": label, "type": kind, "entries": "0", "sha256": sha256}
        self.report.archives.append(entry)
        try:
            with self.blobs.local_copy(sha256) as path:
                meter = Meter(self.budget, path.stat().st_size, self.limits.max_ratio,
                              self.limits.archive_seconds)
                reader = read_container if kind in CONTAINER_KINDS else read_archive
                entry["type"] = reader(
                    kind,
                    path,
                    meter,
                    lambda member: self._visit(member, label, sha256, depth + 1),
                    self.limits.passwords,
                    self.blobs.scratch,
                    self.limits.max_child_bytes,
                )
        except ArchiveLimit as exc:
            self.report.time_limited |= isinstance(exc, TimeLimit)
            self._skip(label, f"archive abandoned: {exc}")
        except CorruptArchive as exc:
            if is_storage_full(exc):  # our disk, not the archive: retried (worker/storage.py)
                raise
            if depth == 0:
                self.top_error = str(exc)
            self._skip(label, str(exc))
        except (StopUnpacking, BadSample):
            raise
        except Exception as exc:  # a reader tripped over hostile input: contain it here
            if is_storage_full(exc):  # our disk, not the archive: retried (worker/storage.py)
                raise
            reason = f"unreadable {kind} archive ({type(exc).__name__}: {exc})"
            if depth == 0:
                self.top_error = reason
            self._skip(label, reason)
        finally:
            entry["entries"] = str(meter.entries)

    def _visit(self, member: Member, parent_label: str, parent_sha: str, depth: int) -> None:
        raw = member.name or _default_member_name(parent_label)
        label = f"{parent_label}/{sanitize_name(raw)}"
        if is_traversal(raw):
            self._skip(label, f"traversal name neutralised (was {raw!r})")
        if member.problem is not None:
            self._skip(label, member.problem)
            return
        if member.stream is None:  # a directory
            return
        head = read_up_to(member.stream, HEAD)
        kind = detect_executable(head)
        archive = None if kind else detect_archive(head)
        if kind is None and archive is None:
            self._skip(label, f"not an executable ({describe(head)})")
            return
        if archive is not None and depth >= self.limits.max_depth:
            self._skip(label, f"nested too deep ({archive} at depth {depth}, limit "
                              f"{self.limits.max_depth})")  # fmt: skip
            return
        if kind is not None and len(self.report.children) >= self.limits.max_children:
            self._skip(label, f"too many executables (limit {self.limits.max_children})")
            return
        try:
            sha256, size = self.blobs.put_chunks(
                self._chunks(head, member.stream), max_bytes=self.limits.max_child_bytes
            )
        except (EntryLimit, BlobTooLarge) as exc:
            reason = str(exc) if isinstance(exc, EntryLimit) else self._too_large()
            self._skip(label, reason)
            return
        if sha256 in self.seen:
            self._skip(label, f"duplicate of {self.seen[sha256]}")
            return
        self.seen[sha256] = label
        if archive is not None:
            self._open_archive(sha256, label, archive, depth)
            return
        if kind is None:  # detect_executable matched above, or it was an archive
            raise RuntimeError(f"{label}: neither an executable nor an archive")
        try:
            with self.blobs.local_copy(sha256) as copy:
                check_executable(copy)
        except BadSample as exc:
            self.malformed.append((label, str(exc)))
            self._skip(label, str(exc))
            return
        self._add_child(sha256, label, kind, depth, size, parent_sha)

    def _chunks(self, head: bytes, stream: BinaryIO) -> Iterator[bytes]:
        """The member's bytes, counted here rather than trusting any declared size."""
        total = len(head)
        yield head
        while chunk := stream.read(CHUNK):
            total += len(chunk)
            if total > self.limits.max_child_bytes:
                raise EntryLimit(self._too_large())
            yield chunk

    def _too_large(self) -> str:
        return f"too large (over {self.limits.max_child_bytes} bytes)"

    # --- results ---------------------------------------------------------------------------
    def _add_child(
        self, sha256: str, label: str, kind: str, depth: int, size: int, parent: str | None
    ) -> None:
        unpacked, note = _upx_unpack(self.blobs, sha256, self.limits.max_child_bytes)
        if note:
            self.report.time_limited |= note == UPX_TIMED_OUT
            self._skip(label, note)
        if unpacked is not None and unpacked[0] not in self.seen:
            # The packed file is only a wrapper: the lifter gets what it unpacks to.
            self._skip(label, f"UPX-packed: replaced by its unpacked form {unpacked[0]}")
            parent, (sha256, size, kind) = sha256, unpacked
            self.seen[sha256] = label
        self.report.children.append(Child(sha256, label, kind, depth, size, parent))

    def _skip(self, name: str, reason: str) -> None:
        self.report.skipped.append({"name": name, "reason": reason})


def _default_member_name(archive_label: str) -> str:
    """What a bare .gz/.bz2/.xz stream without a stored name decompresses to."""
    base = archive_label.rsplit("/", 1)[-1]
    for suffix in (".gz", ".bz2", ".xz"):
        if base.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return "decompressed"


# --- UPX ---------------------------------------------------------------------------------
UnpackedUpx = tuple[str, int, str]  # (sha256, size, format) of the unpacked executable


def _upx_unpack(blobs: BlobStore, sha256: str, max_bytes: int) -> tuple[UnpackedUpx | None, str]:
    """Unpack a UPX-packed executable with the `upx` tool.

    Returns (unpacked, "") on success, (None, note) when the file is packed but stays as it
    is (no upx on this machine, upx refused or timed out), (None, "") when it is not packed.
    """
    with blobs.local_copy(sha256) as path, open(path, "rb") as handle:
        if b"UPX!" not in handle.read(1 << 16):
            return None, ""
    upx = shutil.which("upx") or shutil.which("upx-ucl")
    if upx is None:
        return None, "UPX-packed: upx is not installed, the packed file is analysed"
    with tempfile.TemporaryDirectory(dir=blobs.scratch) as scratch:
        work = Path(scratch) / "packed"
        with blobs.local_copy(sha256) as path:
            shutil.copyfile(path, work)
        work.chmod(0o600)
        try:
            done = subprocess.run(
                # Through sandbox/rlimits.py: file-size, memory and CPU limits (the packed
                # header is hostile too). In the worker this runs inside the sandboxed
                # unpack child, whose namespaces upx inherits.
                limited([upx, "-d", "-q", "-q", str(work)],
                        Limits(memory_bytes=4 << 30, time_s=UPX_TIMEOUT_S,
                               file_bytes=max_bytes)),
                capture_output=True,
                timeout=UPX_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None, UPX_TIMED_OUT
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"UPX-packed: upx -d could not run ({exc})"
        if done.returncode != 0:
            why = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["?"]
            return None, f"UPX-packed: upx -d failed ({why[0][:200]}), the packed file is analysed"
        kind = detect_executable(work)
        try:
            if kind is None:
                raise BadSample("not an executable")
            check_executable(work)
        except BadSample as exc:
            return None, f"UPX-packed: upx -d produced an unusable file ({exc})"
        unpacked, size = blobs.put_file(work)
    return (unpacked, size, kind), ""
