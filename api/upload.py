"""Submit Sample's body: multipart/form-data parsed as it arrives, `sample` streamed to blobs.

Starlette's UploadFile would spool the whole body to a temporary file before the handler
runs; here the `sample` part goes straight from the socket into the blob store's hashing
writer, so a sample is written once, its sha256 is known when the last byte lands, and
an upload over the cap is cut off (413) as soon as it passes the cap. A Content-Length
that cannot fit is refused before a byte is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from api.quotas import UploadAllowance, quota_exceeded
from common.failures import is_storage_full
from store.blobs import BlobStore, BlobTooLarge

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FIELD = "sample"
# Room for the multipart framing around the sample: boundaries, part headers, other
# small fields. The body as a whole may not exceed the cap by more than this.
FRAMING_ALLOWANCE = 64 * 1024
FILENAME_MAX = 255
STORAGE_RETRY_AFTER_S = 60  # Retry-After of a 507 (disk full)
FORM_FIELD_MAX = 1024  # bytes of one small text field beside the sample (Add Reference)

# The request body schema shown in the OpenAPI document (the handler reads the stream).
UPLOAD_SCHEMA_NAME = "Body_submit_sample"
UPLOAD_SCHEMA = {
    "title": UPLOAD_SCHEMA_NAME,
    "type": "object",
    "required": [FIELD],
    "properties": {
        FIELD: {"title": "Sample", "type": "string", "format": "binary",
                "description": "the binary"},
    },
}
UPLOAD_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"$ref": f"#/components/schemas/{UPLOAD_SCHEMA_NAME}"}}
    },
}


@dataclass
class Upload:
    sha256: str
    size: int
    filename: str
    fields: dict[str, str] = field(default_factory=dict)  # the text fields asked for


@dataclass
class _Parts:
    """What the parser callbacks have seen so far."""

    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    disposition: bytes = b""
    in_sample: bool = False
    sample_seen: bool = False
    sample_done: bool = False
    filename: str = ""
    pending: list[bytes] = field(default_factory=list)
    ended: bool = False
    wanted: frozenset[str] = frozenset()  # text fields to keep (others are dropped)
    field_name: str | None = None  # the text field being read
    fields: dict[str, bytearray] = field(default_factory=dict)


async def receive_sample(
    request: Request, blobs: BlobStore, max_bytes: int, fields: frozenset[str] = frozenset(),
    allowance: UploadAllowance | None = None,
) -> Upload:
    """Store the `sample` part of a multipart request; 400/413/422 for bad bodies.
    The small text parts named in `fields` are kept (UTF-8, at most FORM_FIELD_MAX bytes
    each; 400 otherwise); a field sent twice keeps its first value. With an upload quota
    (`allowance`, api/quotas.py) the sample may not pass what is left of it (429)."""
    boundary = _boundary(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + FRAMING_ALLOWANCE:
        raise _too_large(max_bytes)
    cap = max_bytes
    if allowance is not None and allowance.remaining < max_bytes:
        cap = allowance.remaining
        if declared.isdigit() and int(declared) > cap + FRAMING_ALLOWANCE:
            raise quota_exceeded(allowance)
    parts = _Parts(wanted=fields)
    parser = MultipartParser(boundary, _callbacks(parts))
    try:
        sha256, size = await blobs.put_async_chunks(
            _sample_chunks(request, parser, parts, cap), max_bytes=cap
        )
    except BlobTooLarge as exc:
        if allowance is not None and cap < max_bytes:
            raise quota_exceeded(allowance) from exc
        raise _too_large(max_bytes) from exc
    except MultipartParseError as exc:
        raise HTTPException(400, f"malformed multipart body: {exc}") from exc
    except ClientDisconnect as exc:
        raise HTTPException(400, "the client went away before the upload finished") from exc
    except OSError as exc:
        if is_storage_full(exc):  # the partial file is already gone (BlobStore._incoming)
            raise storage_full() from exc
        raise
    return Upload(sha256=sha256, size=size, filename=parts.filename,
                  fields=_text_fields(parts))


def _text_fields(parts: _Parts) -> dict[str, str]:
    out = {}
    for name, raw in parts.fields.items():
        if len(raw) > FORM_FIELD_MAX:
            raise HTTPException(400, f"the form field '{name}' is longer than "
                                     f"{FORM_FIELD_MAX} bytes")
        try:
            out[name] = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HTTPException(400, f"the form field '{name}' is not UTF-8 text") from exc
    return out


async def _sample_chunks(
    request: Request, parser: MultipartParser, parts: _Parts, max_bytes: int
) -> AsyncIterator[bytes]:
    """The sample's bytes, as the parser finds them in the arriving body."""
    received = stored = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes + FRAMING_ALLOWANCE:
            raise BlobTooLarge(f"request body larger than {max_bytes} bytes")
        parser.write(chunk)
        if parts.pending:
            data = b"".join(parts.pending)
            parts.pending.clear()
            stored += len(data)
            yield data
    parser.finalize()
    if not parts.ended:
        raise MultipartParseError("the body ended before the closing boundary")
    if not parts.sample_seen:
        raise HTTPException(422, f"the multipart body has no file field '{FIELD}'")
    if not parts.sample_done:
        raise MultipartParseError(f"the '{FIELD}' part is not terminated")
    if stored == 0:
        raise HTTPException(400, "the uploaded sample is empty")


def _callbacks(parts: _Parts) -> MultipartCallbacks:
    def on_part_begin() -> None:
        parts.disposition = b""

    def on_header_field(data: bytes, start: int, end: int) -> None:
        parts.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        parts.header_value += data[start:end]

    def on_header_end() -> None:
        if bytes(parts.header_field).strip().lower() == b"content-disposition":
            parts.disposition = bytes(parts.header_value)
        parts.header_field.clear()
        parts.header_value.clear()

    def on_headers_finished() -> None:
        _kind, options = parse_options_header(parts.disposition)
        name = options.get(b"name", b"").decode("latin-1")
        # The first `sample` part is the sample; any other part is read and dropped.
        parts.in_sample = name == FIELD and not parts.sample_seen
        parts.field_name = None
        if name in parts.wanted and name not in parts.fields and b"filename" not in options:
            parts.field_name = name
            parts.fields[name] = bytearray()
        if parts.in_sample:
            parts.sample_seen = True
            raw = options.get(b"filename", b"")
            parts.filename = raw.decode("utf-8", errors="replace")[:FILENAME_MAX]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if parts.in_sample:
            parts.pending.append(data[start:end])
        elif parts.field_name is not None:
            value = parts.fields[parts.field_name]
            if len(value) <= FORM_FIELD_MAX:  # beyond: refused once the body is read
                value += data[start:end][: FORM_FIELD_MAX + 1 - len(value)]

    def on_part_end() -> None:
        if parts.in_sample:
            parts.sample_done = True
        parts.in_sample = False
        parts.field_name = None

    def on_end() -> None:
        parts.ended = True

    return {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end, "on_end": on_end,
    }


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary", b"")
    if content_type != b"multipart/form-data" or not boundary:
        raise HTTPException(
            422, f"Submit Sample expects multipart/form-data with a file field '{FIELD}'"
        )
    if len(boundary) > 200:
        raise HTTPException(400, "malformed multipart body: the boundary is too long")
    return boundary


def storage_full() -> HTTPException:
    """507: the blob store or scratch directory has no room for this upload now."""
    return HTTPException(
        507, "insufficient storage: the service has no room to store this upload now; "
             "nothing was kept, retry later",
        headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)},
    )


def _too_large(max_bytes: int) -> HTTPException:
    return HTTPException(413, f"sample is larger than the limit of {max_bytes} bytes")
