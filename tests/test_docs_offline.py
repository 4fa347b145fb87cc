"""/docs renders in a real browser with no internet: headless Chromium whose every host
name but the API's loopback address fails to resolve and whose other traffic goes to a
proxy that is not there. Swagger UI drawing every operation proves its script, styles
and the OpenAPI document all came from the API (api/docs.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx

from api.app import ROUTES
from tests.live_api import live_api

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _render(url: str, profile: Path) -> str:
    assert CHROMIUM, "chromium is missing: make test-deps installs it (TEST_DEBS)"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}",
         # The network is off: no name resolves but 127.0.0.1; anything else would go
         # through a proxy on a closed port.
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         "--proxy-server=http://127.0.0.1:9",
         "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_docs_render_without_network(tmp_path: Path) -> None:
    with live_api(tmp_path / "data", AE_AUTH="enabled", AE_API_KEYS="docs-key",
                  AE_INTERNAL_API_KEYS="docs-internal-key") as port:
        page = httpx.get(f"http://127.0.0.1:{port}/docs").text
        # Nothing on the page is fetched from elsewhere.
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), page
        dom = _render(f"http://127.0.0.1:{port}/docs", tmp_path / "profile")
    drawn = set(re.findall(r'opblock-summary-description">([^<]+)<', dom))
    assert drawn == {summary for _m, _p, _h, summary, *_ in ROUTES}, dom[:3000]
