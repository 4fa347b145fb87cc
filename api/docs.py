"""/docs served whole from this process: Swagger UI's script and styles come from the
installed `fastapi-swagger` package, not a CDN, so the page renders on a machine with
no internet access. ReDoc (which FastAPI also loads from a CDN) is not offered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

DOCS_URL = "/docs"
ASSETS = files("fastapi_swagger.resources")
# URL under /docs -> (file in the package, media type)
ASSET_FILES = {
    "swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": ("swagger-ui.css", "text/css"),
    "favicon.png": ("favicon-32x32.png", "image/png"),
}


def add_docs(app: FastAPI) -> None:
    """GET /docs and its three assets; open like the OpenAPI document."""

    async def swagger_ui(request: Request) -> HTMLResponse:
        # Relative to the app's mount point; never built from the Host header.
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_URL}/favicon.png",
            oauth2_redirect_url=None,
        )

    app.add_api_route(DOCS_URL, swagger_ui, methods=["GET"], include_in_schema=False)
    for name, (filename, media_type) in ASSET_FILES.items():
        app.add_api_route(
            f"{DOCS_URL}/{name}", _asset(str(ASSETS.joinpath(filename)), media_type),
            methods=["GET"], include_in_schema=False,
        )


def _asset(path: str, media_type: str) -> Callable[[], Awaitable[FileResponse]]:
    async def serve() -> FileResponse:
        return FileResponse(path, media_type=media_type,
                            headers={"Cache-Control": "public, max-age=86400"})

    return serve
