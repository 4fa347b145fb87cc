"""Get Report: a real analysed sample's page, rendered by headless Chromium, checked for
what a person sees: the verdict, the chart painted, the table rows, the matches side by
side with the blocks that drove them, and hostile archive member names shown as text
with no script run (both served by the API and saved to a file, as the CLI saves it)."""

from __future__ import annotations

import asyncio
import html
import io
import re
import shutil
import struct
import subprocess
import uuid
import zipfile
import zlib
from pathlib import Path

import httpx
import pytest

from common.config import Settings
from common.contracts import MODEL_NAME
from tests.conftest import ZLIB_STATIC, compile_c, submit, wait_for_final
from tests.live_api import live_api
from tests.test_pipeline_e2e import ZLIB_PROGRAM

pytestmark = pytest.mark.usefixtures("workers")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Each would change the page's title if the browser ran it.
SCRIPT_MEMBER = "<script>document.title='pwned-script'</script>"
IMG_MEMBER = "<img src=x onerror=\"document.title='pwned-img'\">zpack"
SVG_MEMBER = "<svg onload=\"document.title='pwned-svg'\">notes.txt"
BAR_COLOUR = (0x2E, 0x8B, 0x57)  # a "present" family's bar (api/templates/report.html)


@pytest.fixture(scope="module")
def hostile_zip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A zip of a real zlib program and a text file, both under names made to inject."""
    tmp = tmp_path_factory.mktemp("report")
    program = compile_c(tmp, ZLIB_PROGRAM, "-O2", str(ZLIB_STATIC), name="zpack")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(IMG_MEMBER, program.read_bytes())
        archive.writestr(SCRIPT_MEMBER, f"not a program {uuid.uuid4()}\n")
        archive.writestr(SVG_MEMBER, "notes\n")
    return buf.getvalue()


def _chromium(profile: Path, *args: str) -> str:
    """Run headless Chromium with the network off but loopback; its stdout."""
    assert CHROMIUM, "chromium is missing: make test-deps installs it (TEST_DEBS)"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         "--proxy-server=http://127.0.0.1:9", "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _png_pixels(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, raw rows) of an 8-bit RGB(A) PNG, unfiltered."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width = 8, b"", 0
    height = channels = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or colour not in (2, 6) or interlace:
                raise ValueError(f"unsupported PNG: depth {depth}, colour {colour}")
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, row = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = row[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if kind == 1:
                row[i] = (row[i] + a) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + b) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        out += row
        prev = row
    return width, height, channels, bytes(out)


def _count_colour(png: bytes, colour: tuple[int, int, int]) -> int:
    _w, _h, channels, pixels = _png_pixels(png)
    return sum(1 for i in range(0, len(pixels), channels)
               if tuple(pixels[i:i + 3]) == colour)


def _render_served(settings: Settings, path: str, profile: Path) -> tuple[str, bytes]:
    """The page as the API serves it over HTTP (a second API process on the same data,
    keys off so that the browser needs none): its DOM after loading, and a screenshot."""
    with live_api(settings.data_dir, AE_AUTH="disabled") as port:
        url = f"http://127.0.0.1:{port}{path}"
        dom = _chromium(profile, "--dump-dom", url)
        shot = profile / "shot.png"
        _chromium(profile, "--window-size=1000,900", f"--screenshot={shot}", url)
        return dom, shot.read_bytes()


def _title(dom: str) -> str:
    found = re.search(r"<title>(.*?)</title>", dom, flags=re.S)
    assert found, dom[:2000]
    return html.unescape(found.group(1))


def _check_names_are_text(dom: str) -> None:
    """Each hostile name is on the page as text; no element came from one."""
    for name in (SCRIPT_MEMBER, IMG_MEMBER, SVG_MEMBER):
        assert html.escape(name, quote=False) in dom, name
    assert "<script" not in dom and "<img" not in dom
    assert not re.search(r"<svg[^>]*onload", dom)
    assert "pwned" not in _title(dom)


async def test_report_of_a_real_sample_in_chromium(
    api: httpx.AsyncClient, settings: Settings, hostile_zip: bytes, tmp_path: Path
) -> None:
    sha256 = await submit(api, hostile_zip, "hostile.zip")
    status = await wait_for_final(api, sha256)
    assert status["status"][MODEL_NAME] == "SUCCESS", status
    results = (await api.get(f"/predictions/{sha256}/{MODEL_NAME}/results")).json()[
        "prediction_results"]
    assert results["verdict"] == "zlib", results.get("families")
    # The worker attributed the best matches' similarity to their blocks.
    attributed = results["block_attribution"]
    assert attributed and set(attributed) <= set(results["matches"])
    assert all(re.fullmatch(r"-?\d+\.\d{4}", v) for d in attributed.values() for v in d.values())

    path = f"/predictions/{sha256}/{MODEL_NAME}/report"
    page = await api.get(path)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    # Nothing on the page is fetched from elsewhere.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)

    dom, shot = await asyncio.to_thread(_render_served, settings, path, tmp_path / "served")
    assert _title(dom) == f"Attribution report {sha256[:12]}: zlib"
    verdict = re.search(r'id="verdict-text">(.*?)</p>', dom, flags=re.S)
    assert verdict and re.sub(r"<[^>]+>|\s+", " ", verdict.group(1)).split()[:2] == [
        "Verdict:", "zlib"]
    # The chart: an SVG bar per family, the zlib one drawn wide, and painted on screen.
    chart = re.search(r'<svg id="family-chart".*?</svg>', dom, flags=re.S)
    assert chart, dom[:3000]
    bars = dict(re.findall(r'data-family="([^"]+)">.*?<rect [^>]*width="([\d.]+)"',
                           chart.group(0), flags=re.S))
    assert set(bars) == set(results["families"]) and float(bars["zlib"]) > 300
    assert await asyncio.to_thread(_count_colour, shot, BAR_COLOUR) > 2000
    # The matched-function table: a row per match, under its header.
    table = re.search(r'<table id="match-table">(.*?)</table>', dom, flags=re.S)
    assert table and table.group(1).count("<tr>") == len(results["matches"]) + 1
    # Side by side: the best match open, its sample blocks' VEX, the blocks that drove
    # the similarity marked, and the shipped reference said plainly to have no code.
    first = re.search(r'<details id="match-1" class="match" open="">(.*?)</details>', dom,
                      flags=re.S)
    assert first, dom[:3000]
    assert "similarity lost without it" in first.group(1)
    assert 'class="block marked"' in first.group(1) and "drove the similarity" in first.group(1)
    assert re.search(r"<pre>t\d+ = ", first.group(1))
    assert "the reference code is not shipped" in first.group(1)
    assert "<h2 id=\"explanation\">" in dom and "<table" in dom.split('id="explanation"')[1]
    skipped = re.search(r'<table id="skipped-table">(.*?)</table>', dom, flags=re.S)
    assert skipped and html.escape(SCRIPT_MEMBER, quote=False) in skipped.group(1)
    _check_names_are_text(dom)

    # Saved to a file (as the CLI saves it): no header protects it, the escaping does.
    saved = tmp_path / "report.html"
    saved.write_text(page.text)
    file_dom = await asyncio.to_thread(_chromium, tmp_path / "file", "--dump-dom",
                                       saved.as_uri())
    _check_names_are_text(file_dom)
    assert _title(file_dom) == f"Attribution report {sha256[:12]}: zlib"

    # A chosen match further down is shown side by side too, and open.
    last = len(results["matches"])
    chosen = await api.get(path, params={"match": last})
    assert chosen.status_code == 200
    assert re.search(rf'<details id="match-{last}" class="match" open>', chosen.text)
    assert not re.search(r'<details id="match-1" class="match" open>', chosen.text)
    beyond = await api.get(path, params={"match": last + 1})
    assert beyond.status_code == 404 and f"{last} matched functions" in beyond.json()["detail"]


async def test_report_errors_are_clear(api: httpx.AsyncClient) -> None:
    unknown = "0" * 63 + "1"
    missing = await api.get(f"/predictions/{unknown}/{MODEL_NAME}/report")
    assert missing.status_code == 404 and "no prediction" in missing.json()["detail"]
    assert (await api.get(f"/predictions/{unknown[:-1]}/{MODEL_NAME}/report")).status_code == 422
    assert (await api.get(f"/predictions/{unknown}/other/report")).status_code == 422
    # A row whose analysis has not finished: 409, no page.
    pending = uuid.uuid4().hex + uuid.uuid4().hex
    created = await api.post(f"/internal/predictions/{pending}/{MODEL_NAME}")
    assert created.status_code == 200, created.text
    early = await api.get(f"/predictions/{pending}/{MODEL_NAME}/report")
    assert early.status_code == 409 and "not finished" in early.json()["detail"]
    # A failed one: 409 with its error details.
    failed = await api.put(f"/internal/predictions/{pending}/{MODEL_NAME}/results",
                           params={"error_details": "lift: boom"},
                           json={"prediction_results": None})
    assert failed.status_code == 200, failed.text
    ended = await api.get(f"/predictions/{pending}/{MODEL_NAME}/report")
    assert ended.status_code == 409 and "boom" in ended.json()["detail"]
    assert (await api.get(f"/predictions/{pending}/{MODEL_NAME}/report",
                          params={"match": 0})).status_code == 422
    # A SUCCESS row written without results (Update Predictions with null): 409 too.
    emptied = await api.put(f"/internal/predictions/{pending}/{MODEL_NAME}/results",
                            json={"prediction_results": None})
    assert emptied.status_code == 200, emptied.text
    empty = await api.get(f"/predictions/{pending}/{MODEL_NAME}/report")
    assert empty.status_code == 409 and "no stored results" in empty.json()["detail"]
