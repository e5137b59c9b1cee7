"""Multipart text fields that are not valid text are refused, not guessed at.

Starlette decodes a multipart text field in the request's charset (UTF-8 unless the Content-Type names another) and,
when the bytes are not valid in it, silently falls back to Latin-1: ``what \\xff\\xfe color?`` becomes
``what ÿþ color?``. The decoded string cannot tell us which happened (``é`` is both UTF-8 ``c3 a9`` and Latin-1
``e9``), so the check reads the bytes: ``CheckedFormRoute`` gives its endpoints a request whose body stream is also
fed to python-multipart's parser, which decodes each text field as it arrives and answers 400 at the first byte
that is not valid. File parts are not looked at.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.exceptions import HTTPException


class TextFieldCheck:
    """Decodes the text fields (parts without a filename) of a multipart body fed to it in chunks; ``write``
    raises ``UnicodeDecodeError`` at the first field that is not valid in ``charset``."""

    def __init__(self, boundary: bytes, charset: str):
        self.charset = charset
        self.new_decoder = codecs.getincrementaldecoder(charset)
        self.field_name = ""
        self.decoder = None  # None in a file part
        self.header_name, self.header_value, self.disposition = b"", b"", b""
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begins, "on_header_field": self._header_name_data,
            "on_header_value": self._header_value_data, "on_header_end": self._header_ends,
            "on_headers_finished": self._headers_end, "on_part_data": self._part_data, "on_part_end": self._part_ends})

    @classmethod
    def for_content_type(cls, content_type: str | None) -> TextFieldCheck | None:
        """The check for a request with this Content-Type; None for a body that is not multipart, has no boundary,
        or names a charset Python does not know (Starlette reads those as Latin-1, which every byte is)."""
        kind, params = parse_options_header(content_type)
        if kind != b"multipart/form-data" or b"boundary" not in params:
            return None
        try:
            return cls(params[b"boundary"], params.get(b"charset", b"UTF-8").decode("latin-1"))
        except LookupError:
            return None

    def write(self, chunk: bytes) -> None:
        self.parser.write(chunk)

    def _part_begins(self) -> None:
        self.disposition, self.decoder = b"", None

    def _header_name_data(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def _header_ends(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name, self.header_value = b"", b""

    def _headers_end(self) -> None:
        _, options = parse_options_header(self.disposition)
        self.field_name = options.get(b"name", b"").decode(self.charset, errors="replace")
        self.decoder = None if b"filename" in options else self.new_decoder()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.decoder is not None:
            self.decoder.decode(data[start:end])

    def _part_ends(self) -> None:
        if self.decoder is not None:
            self.decoder.decode(b"", final=True)


class CheckedFormRequest(Request):
    """A request whose multipart text fields are checked while the form parser reads the body."""

    async def stream(self) -> AsyncGenerator[bytes, None]:
        check = TextFieldCheck.for_content_type(self.headers.get("content-type"))
        async for chunk in super().stream():
            if check is not None:
                try:
                    check.write(chunk)
                except UnicodeDecodeError:
                    raise HTTPException(400, f"the form field '{check.field_name}' is not valid {check.charset} "
                                             "text; send text as UTF-8.") from None
                except FormParserError:
                    check = None  # malformed multipart: Starlette's own parser reports it on these same bytes
            yield chunk


class CheckedFormRoute(APIRoute):
    """A route whose endpoint reads a ``CheckedFormRequest`` (FastAPI's documented way to change the request)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked_handler(request: Request) -> Response:
            return await handler(CheckedFormRequest(request.scope, request.receive))

        return checked_handler
