"""Reading an upload under the size limit while it streams in (never buffering past the limit).

Accepted bodies: ``multipart/form-data`` with the image in the field ``image``, or the raw image
bytes with an ``image/*``, ``video/*`` or ``application/octet-stream`` content type.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.errors import Problem

RAW_TYPES = ("application/octet-stream",)
RAW_PREFIXES = ("image/", "video/")
FIELD = "image"
MAX_FILENAME_BYTES = 255  # as most file systems allow: the name is kept with the job for a day
# parts of a multipart body: the image and a few fields a form may add; each part costs parser
# callbacks, and a million tiny ones held a request for seconds
MAX_PARTS = 16
MAX_BOUNDARY = 70  # RFC 2046; python-multipart raises past 256, which was a 500


@dataclass
class Upload:
    data: bytes
    content_type: str | None
    filename: str | None = None


def too_large(limit: int, received: int | None = None) -> Problem:
    detail = f"the request body exceeds the limit of {limit} bytes"
    if received is None:
        return Problem(413, "Upload too large", detail, slug="upload-too-large", max_upload_bytes=limit)
    return Problem(413, "Upload too large", detail, slug="upload-too-large", max_upload_bytes=limit,
                   received_bytes=received)


class _ImageField:
    """python-multipart callbacks that keep the bytes of the ``image`` field and nothing else."""

    def __init__(self) -> None:
        self.data: bytearray | None = None
        self.content_type: str | None = None
        self.filename: str | None = None
        self._headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._capture = False
        self.parts = 0

    def callbacks(self) -> dict[str, object]:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end}

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise Problem(413, "Too many parts", f"the multipart body has more than {MAX_PARTS} parts "
                          f"(send the image in the field '{FIELD}')", slug="too-many-parts",
                          max_parts=MAX_PARTS)
        self._headers = {}
        self._capture = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if params.get(b"name") == FIELD.encode() and self.data is None:
            self._capture = True
            self.data = bytearray()
            ctype = self._headers.get(b"content-type")
            self.content_type = ctype.decode("latin-1") if ctype else None
            name = params.get(b"filename")
            self.filename = name.decode("utf-8", "replace") if name else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._capture and self.data is not None:
            self.data += data[start:end]

    def _part_end(self) -> None:
        self._capture = False


async def read_upload(request: Request, limit: int, timeout_s: float) -> Upload:
    """The image bytes of the request; 413 as soon as more than ``limit`` bytes have arrived, 408 when
    the body is not complete ``timeout_s`` after it began (a client dribbling bytes holds a slot)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit, int(declared))
    media, params = parse_options_header(request.headers.get("content-type", ""))
    media_type = media.decode("latin-1").lower()
    multipart = media_type == "multipart/form-data"
    raw_ok = media_type.startswith(RAW_PREFIXES) or media_type in RAW_TYPES
    if not multipart and media_type and not raw_ok:
        raise Problem(415, "Unsupported media type",
                      f"send multipart/form-data with the field '{FIELD}', or the raw image or video bytes "
                      f"with an image/* or video/* content type (got {media_type})",
                      slug="unsupported-media-type")
    field = _ImageField()
    parser: MultipartParser | None = None
    if multipart:
        boundary = params.get(b"boundary")
        if not boundary or len(boundary) > MAX_BOUNDARY:
            raise Problem(400, "Malformed multipart body", "the multipart content type needs a boundary of "
                          f"1 to {MAX_BOUNDARY} characters (RFC 2046)", slug="malformed-multipart")
        parser = MultipartParser(boundary, field.callbacks())  # type: ignore[arg-type]
    raw = bytearray()
    received = 0
    try:
        with anyio.fail_after(timeout_s):
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise too_large(limit)
                if parser is not None:
                    parser.write(chunk)
                else:
                    raw += chunk
        if parser is not None:
            parser.finalize()
    except TimeoutError as e:
        raise Problem(408, "Request timeout", f"the upload was not complete after {timeout_s:g} s "
                      f"({received} bytes arrived)", slug="upload-timeout",
                      headers={"Connection": "close"}) from e
    except MultipartParseError as e:
        raise Problem(400, "Malformed multipart body", str(e), slug="malformed-multipart") from e
    except ClientDisconnect as e:
        raise Problem(400, "Incomplete upload", "the client closed the connection mid-upload",
                      slug="incomplete-upload") from e
    if parser is None:
        return Upload(bytes(raw), media_type or None)
    if field.data is None:
        raise Problem(422, "Invalid request", f"the multipart body has no '{FIELD}' field",
                      slug="invalid-request", errors=[{"loc": ["body", FIELD], "msg": "Field required",
                                                       "type": "missing"}])
    if field.filename is not None and len(field.filename.encode()) > MAX_FILENAME_BYTES:
        raise Problem(422, "Invalid request", f"the file name is {len(field.filename.encode())} bytes long, "
                      f"over the limit of {MAX_FILENAME_BYTES}", slug="invalid-filename",
                      max_filename_bytes=MAX_FILENAME_BYTES)
    return Upload(bytes(field.data), field.content_type, field.filename)
