"""RAR, CAB, ISO 9660, cpio, ar/deb and MSI: each unpacks its executable, and each hostile
twin (bomb, traversal, truncation) ends in a clear refusal, never a crash or an escape.

The containers are built at test time (tests/container_samples.py) around a real ELF,
/bin/true: by Debian's own writers where they exist, by hand-written RAR ("store")
where none does, and by patching a tool's output as a hostile sender would.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from store.blobs import BlobStore
from store.blobs_local import LocalBlobStore
from tests import container_samples as samples
from tests.container_samples import TRUE_ELF
from unpacking.extract import BadSample, UnpackLimits, UnpackReport, unpack_sample
from unpacking.formats import detect_archive

MiB = 1 << 20
TRUE_SHA = hashlib.sha256(TRUE_ELF).hexdigest()


@pytest.fixture(autouse=True, scope="module")
def _builders_installed() -> None:
    """The builders are Debian's tools: missing ones fail the tests, they do not skip."""
    if missing := samples.missing_tools():
        pytest.fail(f"install {' '.join(missing)} (make test-deps does)")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """Where the builders run their tools (outside the store)."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def store(tmp_path: Path, work: Path, monkeypatch: pytest.MonkeyPatch):
    """A BlobStore in tmp_path/store; fails the test if anything lands outside it."""
    root, cwd = tmp_path / "store", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    blobs = LocalBlobStore(root)
    yield blobs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "store", "work"]
    assert list(cwd.iterdir()) == [], "something was written relative to the cwd"
    assert list((root / "tmp").iterdir()) == [], "temporary files left behind"
    assert {p.name for p in root.iterdir()} <= {"tmp", "sha256"}


def unpack(blobs: BlobStore, data: bytes, name: str, **limits) -> UnpackReport:
    return unpack_sample(blobs, blobs.put_bytes(data), UnpackLimits(**limits), name=name)


def refused(blobs: BlobStore, data: bytes, name: str, **limits) -> str:
    with pytest.raises(BadSample) as info:
        unpack(blobs, data, name, **limits)
    return str(info.value)


def reasons(report: UnpackReport) -> dict[str, str]:
    return {item["name"]: item["reason"] for item in report.skipped}


# --- the well-formed containers ---------------------------------------------------------------
Builder = Callable[[Path], bytes]
ONE = {"true": TRUE_ELF}
WELL_FORMED: dict[str, tuple[Builder, str, str, str]] = {
    # id: (builder, detected kind, archive type reported, display name of the ELF)
    "rar4": (lambda w: samples.rar4_stored([("bin/true", TRUE_ELF)]), "rar", "rar", "bin/true"),
    "rar5": (lambda w: samples.rar5_stored([("bin/true", TRUE_ELF)]), "rar", "rar5", "bin/true"),
    "cab-mszip": (lambda w: samples.cab(w, ONE), "cab", "cab", "true"),
    "cab-stored": (lambda w: samples.cab(w, ONE, compress=False), "cab", "cab", "true"),
    "iso-rockridge": (lambda w: samples.iso(w, ONE), "iso9660", "iso9660", "true"),
    "iso-plain": (lambda w: samples.iso(w, ONE, rock_ridge=False), "iso9660", "iso9660", "TRUE"),
    "cpio-newc": (lambda w: samples.bsdtar(w, "newc", ONE), "cpio", "cpio", "true"),
    "cpio-odc": (lambda w: samples.bsdtar(w, "odc", ONE), "cpio", "cpio", "true"),
    "ar-gnu": (lambda w: samples.bsdtar(w, "ar", ONE), "ar", "ar", "true"),
    "ar-bsd": (lambda w: samples.bsdtar(w, "arbsd", ONE), "ar", "ar", "true"),
    "deb": (lambda w: samples.deb(w, ONE), "ar", "ar", "data.tar.xz/usr/bin/true"),
    "msi": (lambda w: samples.msi(w, "true", TRUE_ELF), "ole", "msi", "payload.cab/TrueExe"),
}


@pytest.mark.parametrize("case", sorted(WELL_FORMED))
def test_container_unpacks_its_executable(store: BlobStore, work: Path, case: str) -> None:
    build, kind, archive_type, inner = WELL_FORMED[case]
    data = build(work)
    assert detect_archive(data[: 64 << 10]) == kind
    report = unpack(store, data, f"sample.{case}")
    [child] = report.children
    assert (child.name, child.format, child.sha256) == (f"sample.{case}/{inner}", "ELF", TRUE_SHA)
    assert report.archives[0]["type"] == archive_type
    assert store.read_bytes(child.sha256) == TRUE_ELF


def test_msi_reports_its_embedded_cabinet_and_not_its_tables(store: BlobStore, work: Path) -> None:
    report = unpack(store, samples.msi(work, "true", TRUE_ELF), "setup.msi")
    assert [(a["name"], a["type"]) for a in report.archives] == [
        ("setup.msi", "msi"),
        ("setup.msi/payload.cab", "cab"),
    ]
    assert report.skipped == []  # the database tables ("!…" streams) are not members


def test_cpio_symlink_is_reported_not_followed(store: BlobStore, work: Path) -> None:
    root = work / "tree"
    root.mkdir()
    (root / "true").write_bytes(TRUE_ELF)
    (root / "link").symlink_to("/etc/passwd")
    out = work / "links.cpio"
    samples._run("bsdtar", "--format=newc", "-cf", out, "-C", root, "true", "link", cwd=work)
    report = unpack(store, out.read_bytes(), "links.cpio")
    assert [child.name for child in report.children] == ["links.cpio/true"]
    assert reasons(report)["links.cpio/link"] == "symlink to '/etc/passwd' (not followed)"


# --- encryption ----------------------------------------------------------------------------------
# unar reads encrypted RAR with the password list (unpacking/rar_unar.py); "infected" is
# one of the 4 default passwords, "not-on-the-list" is none of them.
RAR_ENCRYPTION = {"entries": "-p", "headers": "-hp"}


@pytest.mark.parametrize("what", sorted(RAR_ENCRYPTION))
def test_encrypted_rar5_opens_with_a_known_password(
    store: BlobStore, work: Path, what: str
) -> None:
    data = samples.rar(work, {"bin/true": TRUE_ELF}, f"{RAR_ENCRYPTION[what]}infected")
    report = unpack(store, data, "locked.rar")
    [child] = report.children
    assert (child.name, child.format, child.sha256) == ("locked.rar/bin/true", "ELF", TRUE_SHA)
    assert report.archives[0]["type"] == "rar5"
    assert store.read_bytes(child.sha256) == TRUE_ELF


def test_encrypted_rar5_entry_with_an_unknown_password_is_named(
    store: BlobStore, work: Path
) -> None:
    """An archive with a plain and a locked entry: the plain one is analysed, the locked
    one is reported with unar's reason."""
    samples.rar(work, {"plain/true": TRUE_ELF})
    data = samples.rar(work, {"locked/true": TRUE_ELF + b"\0"}, "-pnot-on-the-list")
    report = unpack(store, data, "mixed.rar")
    assert [child.name for child in report.children] == ["mixed.rar/plain/true"]
    reason = reasons(report)["mixed.rar/locked/true"]
    assert reason.startswith(
        "encrypted RAR entry: none of the 4 known passwords worked (unar: "
    ), reason


def test_rar5_with_encrypted_headers_and_an_unknown_password_is_refused(
    store: BlobStore, work: Path
) -> None:
    data = samples.rar(work, {"bin/true": TRUE_ELF}, "-hpnot-on-the-list")
    assert refused(store, data, "locked.rar") == (
        "RAR archive with encrypted headers: none of the 4 known passwords worked"
    )


def test_encrypted_rar5_bomb_is_refused(store: BlobStore, work: Path) -> None:
    """64 MiB of zeros, encrypted: unar is stopped at the file-size limit the meter
    leaves it, before the bytes reach the disk."""
    data = samples.rar(work, {"zeros": bytes(64 * MiB)}, "-pinfected")
    assert len(data) < 1 * MiB
    message = refused(store, data, "bomb.rar")
    assert BOMB in message, message


def test_rar4_aes_entries_open_with_a_known_password(store: BlobStore, work: Path) -> None:
    """RAR 4 entries encrypted for real (AES-128, RAR 3's key derivation; RARLAB's `rar`
    extracts them, checked here), one of them too big for its block so that it is
    padded: decrypted here, read by libarchive."""
    files = [("bin/true", TRUE_ELF), ("bin/true2", TRUE_ELF + b"\0" * 5)]
    data = samples.rar4_stored(files, password="virus")
    (work / "r4.rar").write_bytes(data)
    samples._run("rar", "x", "-idq", "-pvirus", work / "r4.rar", f"{work / 'out'}/", cwd=work)
    assert (work / "out" / "bin" / "true2").read_bytes() == files[1][1]
    report = unpack(store, data, "locked.rar")
    assert [(c.name, c.sha256) for c in report.children] == [
        ("locked.rar/bin/true", TRUE_SHA),
        ("locked.rar/bin/true2", hashlib.sha256(files[1][1]).hexdigest()),
    ]
    assert report.archives[0]["type"] == "rar"


def test_rar4_aes_entry_with_an_unknown_password_is_named(store: BlobStore) -> None:
    data = samples.rar4_stored([("bin/true", TRUE_ELF)], password="not-on-the-list")
    message = refused(store, data, "locked.rar")
    assert "(locked.rar/bin/true: encrypted RAR entry: none of the 4 known passwords " \
           "worked (unar: " in message, message


@pytest.mark.parametrize("case", ["rar4", "rar5"])
def test_encrypted_rar_without_unar_names_the_limit(
    store: BlobStore, case: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where unar is not installed (nothing on PATH here): RAR 4 is still tried with every
    password (decrypted here; the flag is set, the data is not encrypted, so none
    works), RAR 5 names the limit."""
    monkeypatch.setenv("PATH", str(tmp_path / "work"))
    build = samples.rar4_stored if case == "rar4" else samples.rar5_stored
    message = refused(store, build([("bin/true", TRUE_ELF)], encrypted=True), "locked.rar")
    assert message.endswith({
        "rar4": "(locked.rar/bin/true: encrypted RAR entry: none of the 4 known passwords "
                "worked)",
        "rar5": "(locked.rar/bin/true: encrypted RAR entry: libarchive cannot decrypt RAR and "
                "unar is not installed, so the 4 known passwords could not be tried)",
    }[case]), message


def test_rar5_with_encrypted_headers_without_unar_names_the_limit(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "work"))
    data = samples.rar5_stored([("bin/true", TRUE_ELF)], encrypted_headers=True)
    assert refused(store, data, "locked.rar") == (
        "RAR archive with encrypted headers: libarchive cannot decrypt RAR and unar is not "
        "installed, so the 4 known passwords could not be tried"
    )


# --- time ------------------------------------------------------------------------------------
def test_an_archive_out_of_time_is_abandoned_and_the_report_says_so(
    store: BlobStore, work: Path
) -> None:
    """Each archive has UnpackLimits.archive_seconds for every entry and password; one
    past it is abandoned with its reason, and the report is marked time-limited (a less
    busy machine may find more: activities/unpack.py does not keep it)."""
    data = samples.zip_with_encrypted_rars(work)
    timely = unpack(store, data, "mixed.zip")
    assert [c.name for c in timely.children] == [
        "mixed.zip/true", "mixed.zip/four.rar/bin/true", "mixed.zip/five.rar/bin/true"]
    assert not timely.time_limited and reasons(timely) == {}

    late = unpack(store, data, "mixed.zip", archive_seconds=0)
    assert [c.name for c in late.children] == ["mixed.zip/true"]
    assert reasons(late) == {
        "mixed.zip/four.rar": "archive abandoned: encrypted RAR took too long to decrypt",
        "mixed.zip/five.rar": "archive abandoned: encrypted RAR took longer than 0 s to read",
    }
    assert late.time_limited


# --- bombs -------------------------------------------------------------------------------------
BOMB = "possible decompression bomb"


def test_cab_bomb_is_refused(store: BlobStore, work: Path) -> None:
    data = samples.cab(work, {"zeros": bytes(64 * MiB)})
    assert len(data) < 256 << 10  # MSZIP: 64 MiB of zeros in ~110 KiB
    message = refused(store, data, "bomb.cab")
    assert "bomb.cab: archive abandoned: compression ratio above 250" in message
    assert BOMB in message


def test_iso_zisofs_bomb_is_refused(store: BlobStore, work: Path) -> None:
    root = work / "tree"
    root.mkdir()
    (root / "data").write_bytes(b"A" * (64 * MiB))
    out = work / "bomb.iso"
    samples._run("xorriso", "-zisofs", "block_size=128k", "-outdev", out, "-padding", "0",
                 "-map", root, "/", "-set_filter_r", "--zisofs", "/", "--", "-commit",
                 cwd=work)  # fmt: skip
    data = out.read_bytes()
    assert len(data) < 256 << 10  # zisofs: 64 MiB in ~190 KiB
    message = refused(store, data, "bomb.iso")
    assert "bomb.iso: archive abandoned: compression ratio above 250" in message
    assert BOMB in message


def test_iso_overlapping_extents_are_links_not_copies(store: BlobStore, work: Path) -> None:
    """300 directory records pointing at one 4 MiB extent: read as 300 x 4 MiB, it would
    be a 1.2 GB bomb from a 5 MB image; libarchive reports them as hard links."""
    data = samples.iso_overlapping(work, copies=300, size=4 * MiB)
    message = refused(store, data, "overlap.iso")
    assert "overlap.iso/F0299: hard link to 'BIG' (not followed)" in message
    assert "298 more" in message  # BIG itself and the 300 links


def test_msi_carrying_a_cab_bomb_is_refused(store: BlobStore, work: Path) -> None:
    message = refused(store, samples.msi(work, "zeros", bytes(64 * MiB)), "bomb.msi")
    assert "bomb.msi/payload.cab: archive abandoned: compression ratio above 250" in message


STORED_MANY: dict[str, Callable[[list[tuple[str, bytes]]], bytes]] = {
    "rar4": samples.rar4_stored,
    "rar5": samples.rar5_stored,
    "cpio": samples.cpio_newc,
    "ar": samples.ar_bsd,
}


@pytest.mark.parametrize("case", sorted(STORED_MANY))
def test_entry_bomb_is_refused(store: BlobStore, case: str) -> None:
    """Stored formats cannot inflate: their bomb is the member count."""
    data = STORED_MANY[case]([(f"f{index}", b"x") for index in range(1500)])
    message = refused(store, data, f"many.{case}")
    assert f"many.{case}: unpacking stopped: too many archive entries (limit 1000)" in message


@pytest.mark.parametrize("case", sorted(STORED_MANY))
def test_total_size_cap_holds_for_stored_members(store: BlobStore, case: str) -> None:
    members = [(f"part{index}", bytes([index]) * (700 << 10)) for index in range(4)]
    message = refused(store, STORED_MANY[case](members), f"big.{case}", max_total_bytes=2 * MiB)
    assert "unpacking stopped: total decompressed size limit reached (2097152 bytes)" in message


def test_nesting_depth_is_capped(store: BlobStore, work: Path) -> None:
    """cab > ar > cpio > ELF is three levels: with max_depth=2 the cpio stays closed."""
    inner = samples.cpio_newc([("true", TRUE_ELF)])
    middle = samples.ar_bsd([("inner.cpio", inner)])
    outer = samples.cab(work, {"middle.a": middle})
    assert [c.name for c in unpack(store, outer, "n.cab").children] == [
        "n.cab/middle.a/inner.cpio/true"
    ]
    message = refused(store, outer, "n.cab", max_depth=2)
    assert "n.cab/middle.a/inner.cpio: nested too deep (cpio at depth 2, limit 2)" in message


# --- traversal -----------------------------------------------------------------------------------
EVIL = "../../../evil"  # 13 characters, the length of "aaaaaaaaaevil"
SAFE = "aaaaaaaaaevil"


def _traversal_cases(work: Path) -> dict[str, bytes]:
    elf = {SAFE: TRUE_ELF}
    return {
        "rar4": samples.rar4_stored([(EVIL, TRUE_ELF), ("/etc/evil2", TRUE_ELF + b"\0")]),
        "rar5": samples.rar5_stored([(EVIL, TRUE_ELF), ("/etc/evil2", TRUE_ELF + b"\0")]),
        "cpio": samples.cpio_newc([(EVIL, TRUE_ELF), ("/etc/evil2", TRUE_ELF + b"\0")]),
        "ar": samples.ar_bsd([(EVIL, TRUE_ELF), ("/etc/evil2", TRUE_ELF + b"\0")]),
        "cab": samples.patch_name(samples.cab(work, elf), SAFE, EVIL),
        "iso": samples.patch_name(samples.iso(work, elf), SAFE, EVIL),  # Rock Ridge NM
    }


@pytest.mark.parametrize("case", ["rar4", "rar5", "cpio", "ar", "cab", "iso"])
def test_traversal_names_never_escape(
    store: BlobStore, work: Path, tmp_path: Path, case: str
) -> None:
    data = _traversal_cases(work)[case]
    shutil.rmtree(work / "tree", ignore_errors=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "store" not in p.parts)
    report = unpack(store, data, f"t.{case}")
    names = [child.name for child in report.children]
    assert f"t.{case}/evil" in names
    assert all(".." not in name.split("/") for name in names)
    assert reasons(report)[f"t.{case}/evil"] == f"traversal name neutralised (was {EVIL!r})"
    if case in ("rar4", "rar5", "cpio", "ar"):
        assert f"t.{case}/etc/evil2" in names
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "store" not in p.parts)
    assert after == before  # nothing written next to the store (the fixture checks the rest)
    assert not (tmp_path.parent / "evil").exists()


# --- truncation ----------------------------------------------------------------------------------
def _truncated_cases(work: Path) -> dict[str, tuple[bytes, str]]:
    """(container cut inside the ELF's data, the message expected)."""

    def cut(data: bytes) -> bytes:
        at = data.find(TRUE_ELF[:64])
        assert at >= 0, "the ELF is stored as it is"
        return data[: at + len(TRUE_ELF) // 2]

    cab = samples.cab(work, ONE)
    return {
        "rar4": (cut(samples.rar4_stored([("true", TRUE_ELF)])), "Truncated RAR file data"),
        "rar5": (cut(samples.rar5_stored([("true", TRUE_ELF)])), "I/O error when unstoring file"),
        "cab": (cab[: len(cab) // 2], "Truncated CAB header"),
        "iso": (cut(samples.iso(work, ONE)), "Truncated input file"),
        "cpio": (cut(samples.bsdtar(work, "newc", ONE)), "unexpected end or malformed header"),
        "ar": (cut(samples.bsdtar(work, "ar", ONE)), "Truncated ar archive"),
        "msi": (samples.msi(work, "true", TRUE_ELF)[:12000], "corrupt OLE compound file"),
    }


@pytest.mark.parametrize("case", ["rar4", "rar5", "cab", "iso", "cpio", "ar", "msi"])
def test_truncated_container_gives_a_clear_error(store: BlobStore, work: Path, case: str) -> None:
    data, expected = _truncated_cases(work)[case]
    message = refused(store, data, f"cut.{case}")
    assert expected in message
    assert "Error" not in message.split(":")[0]  # a reason, not an exception's class name


@pytest.mark.parametrize("size", [1, 8, 100, 600, 2048, 40000])
@pytest.mark.parametrize("case", sorted(WELL_FORMED))
def test_every_prefix_fails_cleanly(store: BlobStore, work: Path, case: str, size: int) -> None:
    """Whatever the cut, the answer is an ELF (when the cut is past it) or BadSample."""
    data = WELL_FORMED[case][0](work)[:size]
    try:
        report = unpack(store, data, f"p.{case}")
    except BadSample as exc:
        assert str(exc)
    else:
        assert [child.sha256 for child in report.children] == [TRUE_SHA]
