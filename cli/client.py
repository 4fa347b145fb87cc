"""The REST calls, through httpx: every error answer becomes a CliError with its exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from cli.config import Config
from cli.errors import CliError, Exit


def detail(response: httpx.Response) -> str:
    """The API's `detail` message (422: pydantic's errors joined), else the body's text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    message = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(message, list):
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg', '')}"
            if isinstance(e, dict) else str(e) for e in message)
    return str(message)


def exit_for(status_code: int) -> Exit:
    if status_code == 404:
        return Exit.NOT_FOUND
    if status_code in (401, 403):
        return Exit.UNAUTHORISED
    return Exit.REFUSED


def segment(value: str) -> str:
    """One path segment, percent-encoded (the model name has spaces)."""
    return quote(value, safe="")


class Api:
    """One connection to the API with the configured key."""

    def __init__(self, config: Config) -> None:
        self.config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        try:
            self._http = httpx.Client(base_url=config.url, headers=headers,
                                      timeout=config.timeout_s, follow_redirects=False)
        except httpx.InvalidURL as err:
            raise CliError(f"bad API URL {config.url!r}: {err}", Exit.USAGE) from err

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request; an error answer or no answer raises CliError."""
        where = f"{self.config.url}{path}"
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as err:
            raise CliError(f"bad API URL {self.config.url!r}: {err}", Exit.USAGE) from err
        except httpx.TimeoutException as err:
            raise CliError(f"the API at {self.config.url} did not answer within "
                           f"{self.config.timeout_s:g} s ({method} {path})",
                           Exit.UNREACHABLE) from err
        except httpx.TransportError as err:
            raise CliError(f"the API at {self.config.url} is unreachable: {err}",
                           Exit.UNREACHABLE) from err
        if response.status_code >= 400:
            message = f"{method} {where}: {response.status_code} {detail(response)}"
            if response.status_code == 401 and not self.config.api_key:
                message += " (no key configured: set AE_API_KEY, --api-key or api_key in " \
                           "the config file)"
            raise CliError(message, exit_for(response.status_code), response.status_code)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as err:
            raise CliError(f"{method} {path}: the answer is not JSON", Exit.REFUSED) from err

    # --- the operations the commands use ----------------------------------------------
    def submit(self, file: Path) -> str:
        with file.open("rb") as handle:
            body = self.json("POST", "/samples", files={"sample": (file.name, handle)})
        return str(body["sample_id"])

    def status(self, sha256: str) -> dict[str, Any]:
        return self.json("GET", f"/predictions/{sha256}/status")

    def results(self, sha256: str) -> dict[str, Any]:
        return self.json("GET", f"/predictions/{sha256}/{segment(self.config.model)}/results")

    def revoke(self, sha256: str) -> dict[str, Any]:
        return self.json("POST", f"/predictions/{sha256}/{segment(self.config.model)}/revoke")

    def report(self, sha256: str) -> bytes:
        path = f"/predictions/{sha256}/{segment(self.config.model)}/report"
        return self.request("GET", path).content

    def search(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.json("GET", "/samples", params=params)

    def similar(self, sha256: str, params: dict[str, Any]) -> dict[str, Any]:
        return self.json("GET", f"/samples/{sha256}/similar", params=params)


class Session:
    """The resolved configuration, and the API connection made on first use."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._api: Api | None = None

    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = Api(self.config)
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
