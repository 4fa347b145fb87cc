"""Fuzz the unpack path and the upload parser for a fixed time (atheris/libFuzzer); not CI.

    nice -n 10 .venv/bin/python bench/fuzz_unpack.py --seconds 600

Targets, each fed mutated inputs in process by libFuzzer (coverage of the Python code of
unpacking/, api/upload.py, python-multipart, olefile, py7zr guides the mutations;
libarchive's C code is exercised but not instrumented):

- `unpack`: the bytes are stored as a sample and `unpack_sample` runs on them. Seeds: a
  real ELF, PE and Mach-O header, and zip, tar, tar.gz, gzip, bz2, xz, 7z, RAR 4/5, CAB,
  ISO 9660, cpio, ar, deb and MSI containers around /bin/true (tests/container_samples.py).
  A finding is any exception other than BadSample, a crash of the process (libarchive is C),
  or an input that runs past `--timeout` seconds (a hang).
- `upload`: the bytes are a multipart body (the first byte picks the size of the chunks it
  arrives in) given to `api.upload.receive_sample` through a real Starlette Request. A
  finding is anything but an Upload or an HTTPException with a 4xx status, or an Upload
  whose blob does not hold the size it reports.

The driver runs one libFuzzer session per target in a child process, restarts it after
each finding until the target's time is spent, minimises each crash (libFuzzer
-minimize_crash), and writes bench/fuzz_unpack.json and the inputs under
bench/fuzz_findings/. Every finding becomes a test in tests/test_fuzz_regressions.py.
"""

from __future__ import annotations

import argparse
import asyncio
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT_JSON = ROOT / "bench" / "fuzz_unpack.json"
FINDINGS = ROOT / "bench" / "fuzz_findings"
BOUNDARY = b"fuzzboundary"
UPLOAD_MAX_BYTES = 64 << 10
MiB = 1 << 20


# --- seeds -------------------------------------------------------------------------------------
def unpack_seeds(work: Path) -> dict[str, bytes]:
    from tests import container_samples as samples
    from tests.container_samples import TRUE_ELF

    one = {"true": TRUE_ELF}
    seeds = {
        "elf": TRUE_ELF,
        "pe": _pe(),
        "macho": b"\xcf\xfa\xed\xfe"
        + bytes.fromhex("07000001030000000200000001000000")
        + (16).to_bytes(4, "little")
        + bytes(24),
        "rar4": samples.rar4_stored([("bin/true", TRUE_ELF), ("dir/x", b"x")]),
        "rar5": samples.rar5_stored([("bin/true", TRUE_ELF), ("dir/x", b"x")]),
        "rar5-encrypted": samples.rar5_stored([("true", TRUE_ELF)], encrypted=True),
        "rar4-aes": samples.rar4_stored([("bin/true", TRUE_ELF)], password="infected"),
        "rar5-rar-p": samples.rar(work, one, "-pinfected", out="p.rar"),
        "rar5-rar-hp": samples.rar(work, one, "-hpinfected", out="hp.rar"),
        "cab": samples.cab(work, one),
        "cab-stored": samples.cab(work, one, compress=False),
        "iso": samples.iso(work, one),
        "cpio": samples.bsdtar(work, "newc", one),
        "cpio-odc": samples.bsdtar(work, "odc", one),
        "ar": samples.bsdtar(work, "ar", one),
        "deb": samples.deb(work, one),
        "msi": samples.msi(work, "true", TRUE_ELF),
        "zip": _zip(TRUE_ELF),
        "tar": _tar(TRUE_ELF),
        "tar.gz": gzip.compress(_tar(TRUE_ELF)),
        "gz": gzip.compress(TRUE_ELF),
        "bz2": bz2.compress(TRUE_ELF),
        "xz": lzma.compress(TRUE_ELF),
        "7z": _seven_zip(work, TRUE_ELF),
    }
    return seeds


def _pe() -> bytes:
    dos = bytearray(0x40)
    dos[0:2] = b"MZ"
    dos[0x3C:0x40] = (0x40).to_bytes(4, "little")
    coff = bytes.fromhex("4c010100") + bytes(12) + bytes.fromhex("e0000201")
    optional = bytes.fromhex("0b01") + bytes(0xE0 - 2)
    return bytes(dos) + b"PE\0\0" + coff + optional + b".text\0\0\0" + bytes(32) + bytes(512)


def _zip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bin/true", data)
    return buf.getvalue()


def _tar(data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        info = tarfile.TarInfo("bin/true")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _seven_zip(work: Path, data: bytes) -> bytes:
    import py7zr

    path = work / "seed.7z"
    with py7zr.SevenZipFile(path, "w") as archive:
        archive.writestr(data, "bin/true")
    return path.read_bytes()


def upload_seeds() -> dict[str, bytes]:
    elf = Path("/bin/true").read_bytes()[:2048]

    def part(name: bytes, value: bytes, filename: bytes | None = None) -> bytes:
        disposition = b'form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        head = b"--" + BOUNDARY + b"\r\nContent-Disposition: " + disposition
        return head + b"\r\nContent-Type: application/octet-stream\r\n\r\n" + value + b"\r\n"

    end = b"--" + BOUNDARY + b"--\r\n"
    chunked = 7  # first byte: chunk size selector
    return {
        "sample": bytes([chunked]) + part(b"sample", elf, b"true") + end,
        "reference": bytes([200])
        + part(b"family", b"zlib")
        + part(b"version", b"1.2")
        + part(b"tags", b"a,b")
        + part(b"sample", elf, b"libz.so")
        + end,
        "two-samples": bytes([1]) + part(b"sample", elf, b"a") + part(b"sample", b"x", b"b") + end,
        "preamble": bytes([64])
        + b"preamble\r\n"
        + part(b"sample", elf, b'q"t')
        + end
        + b"epilogue",
        "no-sample": bytes([3]) + part(b"other", b"value") + end,
        "big": bytes([255]) + part(b"sample", b"A" * (UPLOAD_MAX_BYTES + 10), b"big") + end,
    }


def dictionary(target: str) -> list[bytes]:
    if target == "upload":
        return [b"--" + BOUNDARY, b"\r\n\r\n", b"\r\n", b"Content-Disposition: ",
                b'form-data; name="sample"; filename="', b"Content-Type: ", b'name="family"',
                b"--" + BOUNDARY + b"--", b"filename*=UTF-8''"]  # fmt: skip
    return [b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01\x00", b"MSCF\0\0\0\0", b"CD001",
            b"070701", b"070707", b"!<arch>\n", b"#1/", b"PK\x03\x04", b"PK\x05\x06",
            b"ustar\x00", b"\x7fELF", b"MZ", b"PE\0\0", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
            b"7z\xbc\xaf\x27\x1c", b"\x1f\x8b\x08", b"BZh9", b"\xfd7zXZ\x00", b"../",
            b"TRAILER!!!", b"\xff\xff\xff\xff", b"\x00\x00\x00\x80", b"UPX!"]  # fmt: skip


# --- the targets (worker process) --------------------------------------------------------------
class _Target:
    def __init__(self, name: str, scratch: Path, stats_path: Path) -> None:
        import atheris

        from store.blobs_local import LocalBlobStore

        with atheris.instrument_imports(include=["unpacking", "api.upload", "python_multipart",
                                                 "olefile", "py7zr", "libarchive"]):  # fmt: skip
            import api.upload  # noqa: F401
            import unpacking.extract  # noqa: F401
        self.name, self.scratch, self.stats_path = name, scratch, stats_path
        self.store_cls = LocalBlobStore
        self.blobs = LocalBlobStore(scratch / "store")
        self.runs = 0
        self.outcomes: Counter[str] = Counter()
        self.loop = asyncio.new_event_loop()

    def __call__(self, data: bytes) -> None:
        self.runs += 1
        if self.runs % 500 == 0:  # keep the scratch store small, report progress
            shutil.rmtree(self.scratch / "store", ignore_errors=True)
            self.blobs = self.store_cls(self.scratch / "store")
            self.stats_path.write_text(json.dumps({"runs": self.runs, **self.outcomes}))
        if self.name == "unpack":
            self.unpack(data)
        else:
            self.upload(data)

    def unpack(self, data: bytes) -> None:
        from unpacking.extract import BadSample, UnpackLimits, unpack_sample

        if not data:
            return
        limits = UnpackLimits(max_total_bytes=64 * MiB, max_child_bytes=16 * MiB)
        try:
            report = unpack_sample(self.blobs, self.blobs.put_bytes(data), limits, name="f")
        except BadSample as exc:
            self.outcomes["BadSample"] += 1
            if "unreadable " in str(exc) and " archive (" in str(exc):
                self.outcomes["contained: " + str(exc).split(" archive (")[1].split(":")[0]] += 1
            return
        self.outcomes["children"] += 1
        for item in report.skipped:
            if item["reason"].startswith("unreadable "):
                kind = item["reason"].split(" archive (")[-1].split(":")[0]
                self.outcomes["contained: " + kind] += 1

    def upload(self, data: bytes) -> None:
        from fastapi import HTTPException
        from starlette.requests import Request

        from api.upload import receive_sample

        if not data:
            return
        step, body = 1 + data[0] * 37 % 4096, data[1:]
        chunks = [body[at : at + step] for at in range(0, len(body), step)] or [b""]

        async def receive() -> dict:
            chunk = chunks.pop(0) if chunks else b""
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        headers = [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        scope = {"type": "http", "method": "POST", "path": "/samples", "headers": headers,
                 "query_string": b"", "http_version": "1.1"}  # fmt: skip
        request = Request(scope, receive)
        fields = frozenset({"family", "version", "tags"})
        try:
            upload = self.loop.run_until_complete(
                receive_sample(request, self.blobs, UPLOAD_MAX_BYTES, fields)
            )
        except HTTPException as exc:
            if not 400 <= exc.status_code < 500:
                raise AssertionError(f"upload answered {exc.status_code}: {exc.detail}") from exc
            self.outcomes[f"HTTP {exc.status_code}"] += 1
            return
        if self.blobs.size(upload.sha256) != upload.size or upload.size > UPLOAD_MAX_BYTES:
            raise AssertionError(f"stored {self.blobs.size(upload.sha256)}, said {upload.size}")
        self.outcomes["stored"] += 1


def worker(target: str, libfuzzer_args: list[str]) -> None:
    import atheris

    # libFuzzer ends the process with exit(): the driver removes the scratch folder.
    scratch = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-", dir=os.environ.get("FUZZ_TMP")))
    stats = Path(os.environ.get("FUZZ_STATS", scratch / "stats.json"))
    atheris.Setup([sys.argv[0], *libfuzzer_args], _Target(target, scratch, stats))
    atheris.Fuzz()


# --- the driver ----------------------------------------------------------------------------------
def session(target: str, seconds: int, corpus: Path, seeds: Path, artifacts: Path,
            timeout: int, stats: Path) -> dict:  # fmt: skip
    argv = [sys.executable, __file__, "--worker", target, "--",
            f"-max_total_time={seconds}", f"-timeout={timeout}", "-rss_limit_mb=3072",
            "-print_final_stats=1", f"-artifact_prefix={artifacts}/",
            f"-dict={corpus.parent / 'dict'}", "-max_len=1048576",
            str(corpus), str(seeds)]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                          env={**os.environ, "FUZZ_STATS": str(stats),
                               "FUZZ_TMP": str(corpus.parent)})  # fmt: skip
    log = done.stdout + done.stderr
    runs = re.findall(r"stat::number_of_executed_units: (\d+)", log)
    if not runs:  # crashed before the final stats: the last progress line has the count
        runs = re.findall(r"^#(\d+)\s", log, re.M)[-1:]
    return {"seconds": round(time.monotonic() - started, 1), "runs": int(runs[-1]) if runs else 0,
            "rc": done.returncode, "tail": log[-3000:]}  # fmt: skip


def reproduce(target: str, path: Path) -> str:
    argv = [sys.executable, __file__, "--worker", target, "--", str(path)]
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=600, env={**os.environ, "FUZZ_TMP": scratch})  # fmt: skip
    lines = [line for line in (done.stdout + done.stderr).splitlines()
             if line.strip() and not line.startswith(("INFO:", "#", "MS:"))]  # fmt: skip
    return "\n".join(lines[-12:])


def minimise(target: str, path: Path, out: Path) -> Path:
    argv = [sys.executable, __file__, "--worker", target, "--", "-minimize_crash=1",
            "-max_total_time=60", f"-exact_artifact_path={out}", str(path)]  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(argv, capture_output=True, timeout=300,
                       env={**os.environ, "FUZZ_TMP": scratch})  # fmt: skip
    return out if out.exists() and out.stat().st_size else path


def drive(targets: list[str], seconds: int, timeout: int, only: str = "") -> dict:
    work = Path(tempfile.mkdtemp(prefix="fuzz-driver-"))
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "command": " ".join(["nice -n 10 .venv/bin/python bench/fuzz_unpack.py",
                                         f"--seconds {seconds * len(targets)}",
                                         f"--targets {','.join(targets)}",
                                         f"--timeout {timeout}",
                                         *([f"--only-seeds {only}"] if only else [])]),
                    "targets": {}}  # fmt: skip
    try:
        for target in targets:
            base = work / target
            corpus, seed_dir, artifacts = base / "corpus", base / "seeds", base / "artifacts"
            for folder in (corpus, seed_dir, artifacts):
                folder.mkdir(parents=True)
            seeds = unpack_seeds(base) if target == "unpack" else upload_seeds()
            seeds = {k: v for k, v in seeds.items() if k.startswith(only)}
            for name, data in seeds.items():
                (seed_dir / name).write_bytes(data)
            (base / "dict").write_text(
                "".join(f'"{_escape(entry)}"\n' for entry in dictionary(target))
            )
            sessions, findings, stats = [], [], base / "stats.json"
            outcomes: Counter[str] = Counter()
            deadline = time.monotonic() + seconds
            while (left := int(deadline - time.monotonic())) > 5:
                before = set(artifacts.iterdir())
                run = session(target, left, corpus, seed_dir, artifacts, timeout, stats)
                sessions.append({k: v for k, v in run.items() if k != "tail"})
                if stats.exists():
                    counted = json.loads(stats.read_text())
                    counted.pop("runs", None)
                    outcomes.update(counted)
                    stats.unlink()
                new = sorted(set(artifacts.iterdir()) - before)
                for artifact in new:
                    findings.append(_finding(target, artifact, run["tail"]))
                if not new:
                    if run["rc"] != 0:
                        findings.append({"target": target, "kind": "worker exit",
                                         "rc": run["rc"], "log": run["tail"][-1500:]})  # fmt: skip
                    break
            result["targets"][target] = {
                "seconds": round(sum(s["seconds"] for s in sessions), 1),
                "inputs": sum(s["runs"] for s in sessions),
                "sessions": len(sessions),
                "seeds": sorted(seeds),
                "corpus_after": len(list(corpus.iterdir())),
                "outcomes_sampled": dict(outcomes.most_common()),
                "findings": findings,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _finding(target: str, artifact: Path, log: str) -> dict:
    kind = artifact.name.split("-", 1)[0]  # crash, timeout, oom, leak, slow-unit
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()[:12]
    FINDINGS.mkdir(exist_ok=True)
    kept = FINDINGS / f"{target}-{kind}-{digest}"
    shutil.copyfile(artifact, kept)
    minimal = kept
    if kind == "crash":
        minimal = minimise(target, artifact, FINDINGS / f"{target}-{kind}-{digest}.min")
    return {"target": target, "kind": kind, "input": str(kept.relative_to(ROOT)),
            "minimised": str(minimal.relative_to(ROOT)), "size": minimal.stat().st_size,
            "reproduced": reproduce(target, minimal), "log": log[-1500:]}  # fmt: skip


def _escape(entry: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in entry)


def main() -> None:
    if "--worker" in sys.argv:
        at = sys.argv.index("--worker")
        rest = sys.argv[at + 2 :]
        worker(sys.argv[at + 1], rest[1:] if rest[:1] == ["--"] else rest)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=600, help="total, split between targets")
    parser.add_argument("--targets", default="unpack,upload")
    parser.add_argument("--timeout", type=int, default=90, help="seconds one input may take")
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    parser.add_argument("--only-seeds", default="", metavar="PREFIX",
                        help="start from the seeds whose names begin so (e.g. rar)")
    args = parser.parse_args()
    targets = args.targets.split(",")
    result = drive(targets, args.seconds // len(targets), args.timeout, args.only_seeds)
    if args.out != OUT_JSON:
        result["command"] += f" --out {args.out}"
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, target in result["targets"].items():
        print(f"{name}: {target['inputs']} inputs in {target['seconds']} s, "
              f"{len(target['findings'])} findings")  # fmt: skip


if __name__ == "__main__":
    main()
