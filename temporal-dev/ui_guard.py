"""A guard in front of the Temporal Web UI of `make up` (the dev server's UI has no
settings for this):

- it answers only requests whose Host header names the guard's own loopback address
  (127.0.0.1, localhost or [::1] with its port), so a web page that rebinds its DNS name
  to 127.0.0.1 cannot drive the UI (403 for any other Host);
- unless started with --allow-writes, it refuses every request that could change a
  workflow (any method but GET/HEAD, except the read-only workflow query the stack trace
  view uses) with 403, and tells the UI so (`/api/v1/settings` answers
  `DisableWriteActions: true`), which greys out terminate, cancel, reset, signal, batch.

The UI itself listens on a loopback port only the guard uses.

    python temporal-dev/ui_guard.py --port 8233 --upstream 127.0.0.1:18233 [--allow-writes]
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
SAFE_METHODS = frozenset({"GET", "HEAD"})
# Temporal's QueryWorkflow (read-only) is a POST; the UI's stack trace view uses it.
READ_ONLY_POSTS = re.compile(r"^/api/v1/namespaces/[^/]+/workflows/[^/]+/query/[^/]+$")
SETTINGS_PATH = "/api/v1/settings"
WRITE_SETTINGS = (
    "DisableWriteActions", "WorkflowTerminateDisabled", "WorkflowCancelDisabled",
    "WorkflowSignalDisabled", "WorkflowUpdateDisabled", "WorkflowResetDisabled",
    "WorkflowPauseDisabled", "BatchActionsDisabled", "StartWorkflowDisabled",
    "ActivityCommandsDisabled",
)
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})


def allowed_hosts(port: int) -> frozenset[str]:
    return frozenset(f"{name}:{port}" for name in LOOPBACK_NAMES)


def create_guard(upstream: str, port: int, allow_writes: bool) -> Starlette:
    hosts = allowed_hosts(port)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(base_url=f"http://{upstream}", timeout=60) as client:
            app.state.client = client
            yield

    async def forward(request: Request) -> Response:
        host = request.headers.get("host", "").lower()
        if host not in hosts:
            return PlainTextResponse(
                f"403: this Temporal UI answers only as {' or '.join(sorted(hosts))}", 403
            )
        path = request.url.path
        if not allow_writes and request.method not in SAFE_METHODS and not (
            request.method == "POST" and READ_ONLY_POSTS.match(path)
        ):
            return PlainTextResponse(
                "403: write actions are off in this Temporal UI (make up starts it read-only; "
                "AE_TEMPORAL_UI_WRITES=enabled turns them on)", 403
            )
        client: httpx.AsyncClient = request.app.state.client
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        upstream_request = client.build_request(
            request.method, path, params=request.url.query, headers=headers,
            content=await request.body(),
        )
        answer = await client.send(upstream_request, stream=True)
        out_headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        if path == SETTINGS_PATH and answer.status_code == 200 and not allow_writes:
            settings = json.loads(await answer.aread())
            await answer.aclose()
            settings.update(dict.fromkeys(WRITE_SETTINGS, True))
            out_headers.pop("content-encoding", None)
            return Response(json.dumps(settings), answer.status_code, out_headers,
                            media_type="application/json")
        return StreamingResponse(answer.aiter_raw(), answer.status_code, out_headers,
                                 background=BackgroundTask(answer.aclose))

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)],
                     lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port of the Temporal UI")
    parser.add_argument("--allow-writes", action="store_true")
    args = parser.parse_args()
    app = create_guard(args.upstream, args.port, args.allow_writes)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", server_header=False)


if __name__ == "__main__":
    main()
