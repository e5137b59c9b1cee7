"""The web app behind ``tcl serve``: one page for asking questions about images, and a JSON API.

Routes:
    ``GET /``                      the page (plain HTML and JavaScript, no front-end build).
    ``POST /api/vqa``              multipart ``image`` (a file) or ``example`` (an id), ``question``, ``top_k``,
                                   ``heatmap`` → the top answers with scores (and, with ``heatmap=true``, the
                                   cross-attention heat map).
    ``GET /api/examples``          the example images the server offers; ``GET /api/examples/{id}`` one of them.
    ``GET /api/health``            the model's head, answer count and image size.
    ``GET /openapi.json``          the API's OpenAPI description (FastAPI writes it from the code below).

Safety: requests never name files (examples are chosen by number from a list the server made at start); request
bodies are capped before they are read; multipart text fields that are not valid UTF-8 are refused, not read as
Latin-1 (``tcl.serving.forms``); images are decoded with a pixel limit; every error is JSON
``{"error": {"status", "code", "message"}}`` with a fitting status code.

Batching: requests are checked and decoded in their own threads, then answered together by one worker thread
(``tcl.serving.batching``): the questions waiting for the model, up to ``max_batch``, share one forward pass, which
waits up to ``max_wait_ms`` for requests still being decoded. Heat maps come from the same pass (the attention hooks
see the whole batch); only the requests that ask for one pay for drawing it. With ``max_queue`` requests waiting,
further ones get 503 at once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from tcl.data.images import as_rgb_image
from tcl.errors import BadSampleError, DataError
from tcl.inference.attention import heatmap_overlay, png_bytes
from tcl.serving.batching import BatcherClosed, QueueFull, RequestBatcher
from tcl.serving.forms import CheckedFormRoute

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
SHUTTING_DOWN = "the server is shutting down; try again when it is back."


@dataclass
class ServeSettings:
    """Limits of the server (``tcl serve`` sets them from its options)."""

    max_upload_bytes: int = 10 * 2**20
    max_image_pixels: int = 40_000_000
    max_question_chars: int = 500
    max_top_k: int = 20
    examples: list[Path] = field(default_factory=list)
    # A request body (the upload) must arrive within this many seconds of its first byte (slow clients hold memory).
    body_timeout: float = 30.0
    # Uploads decoded at once, and the side they are shrunk to while decoding: the model sees 64-384 pixels and the
    # heat map 320, so a 6,300 x 6,300 photo never needs its 119 million pixels in memory (JPEG decodes at 1/8 scale).
    concurrent_decodes: int = 2
    max_image_side: int = 1024
    # Connections served at once (uvicorn answers 503 beyond); slow request heads are closed after 10 s
    # (tcl.serving.protocol).
    max_connections: int = 64
    # Questions answered in one forward pass at most, how long a batch waits for requests still being decoded
    # (milliseconds), and how many may wait for the model before further requests get 503 (tcl.serving.batching).
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256


class Answer(BaseModel):
    answer: str
    score: float


class Attention(BaseModel):
    grid: list[list[float]]
    overlay_png: str


class VQAResponse(BaseModel):
    question: str
    answers: list[Answer]
    attention: Attention | None = None  # with heatmap=true only
    elapsed_ms: float


class Example(BaseModel):
    id: int
    name: str
    url: str


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES = {400: {"model": ErrorBody, "description": "bad question, image or top_k"},
                   404: {"model": ErrorBody, "description": "unknown example id"},
                   408: {"model": ErrorBody, "description": "the request body arrived too slowly"},
                   413: {"model": ErrorBody, "description": "request body or image too large"},
                   422: {"model": ErrorBody, "description": "malformed form fields"},
                   500: {"model": ErrorBody, "description": "an unforeseen failure (details in the server's log)"},
                   503: {"model": ErrorBody, "description": "too many requests waiting, or the server is stopping"}}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "code": code, "message": message}}, status_code=status)


def find_examples(folder: str | Path, limit: int = 12) -> list[Path]:
    """The first ``limit`` images of a folder, by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:limit]


@dataclass
class QuestionItem:
    """One request as the batcher answers it: the prepared image [3, S, S], the checked question, and what to
    return."""

    image: torch.Tensor
    question: str
    top_k: int
    heatmap: bool = False


def answer_items(pipeline, items: Sequence[QuestionItem]) -> list[tuple[list[dict], torch.Tensor | None]]:
    """(answers, heat-map grid or None) of each item, from one forward pass over all of them."""
    answers, grids = pipeline.answer_batch(torch.stack([item.image for item in items]),
                                           [item.question for item in items], max(item.top_k for item in items),
                                           attention=any(item.heatmap for item in items))
    return [(found[:item.top_k], grids[n] if item.heatmap else None)
            for n, (item, found) in enumerate(zip(items, answers))]


def create_app(pipeline, settings: ServeSettings | None = None) -> FastAPI:
    """The app for a loaded ``VQAPipeline``; ``app.state.batcher`` answers its questions."""
    settings = settings or ServeSettings()
    # The worker looks ``pipeline.answer_batch`` up at each batch (tests replace it to make the model fail).
    batcher = RequestBatcher(lambda items: answer_items(pipeline, items), settings.max_batch,
                             settings.max_wait_ms / 1000, settings.max_queue)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title="tcl VQA", version="1", description="Ask questions about images with a TCL VQA model.",
                  lifespan=lifespan)
    app.state.batcher = batcher
    decoding = threading.BoundedSemaphore(settings.concurrent_decodes)
    # Its routes' multipart text fields are checked as bytes: Starlette would read invalid ones as Latin-1.
    app.router.route_class = CheckedFormRoute
    _install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes + 64 * 1024,  # room for the form fields
                       timeout=settings.body_timeout)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("tcl.serving").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/favicon.svg", include_in_schema=False)
    @app.get("/favicon.ico", include_in_schema=False)  # asked for by browsers that ignore the page's icon link
    def favicon() -> Response:
        icon = resources.files("tcl.serving").joinpath("favicon.svg").read_bytes()
        return Response(icon, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "head": pipeline.model.head, "answers": len(pipeline.processor.answers),
                "image_size": pipeline.processor.settings.image_size}

    @app.get("/api/examples", response_model=list[Example])
    def examples() -> list[Example]:
        return [Example(id=i, name=path.stem, url=f"/api/examples/{i}") for i, path in enumerate(settings.examples)]

    @app.get("/api/examples/{example_id}", response_class=FileResponse)
    def example_image(example_id: int) -> FileResponse:
        return FileResponse(_example_path(settings, example_id))

    @app.post("/api/vqa", response_model=VQAResponse, responses=ERROR_RESPONSES)
    def answer(question: str = Form("", description="the question, in English"),
               image: UploadFile | None = File(None, description="an image file (JPEG, PNG, ...)"),
               example: int | None = Form(None, description="the id of an example image instead of a file"),
               top_k: int = Form(5, description="how many answers to return"),
               heatmap: bool = Form(False, description="also return the cross-attention heat map")) -> VQAResponse:
        question = _check_question(question, settings, pipeline.processor)
        if not 1 <= top_k <= settings.max_top_k:
            raise ApiError(400, "bad_top_k", f"top_k must be between 1 and {settings.max_top_k}, got {top_k}.")
        with batcher.coming() as arrival:  # a batch that has begun waits for this request (up to max_wait_ms)
            with decoding:
                picture = _read_image(image, example, settings)
                prepared = pipeline.processor.images([picture])[0]
            start = time.perf_counter()
            future = _submit(batcher, QuestionItem(prepared, question, top_k, heatmap), arrival, settings)
        answers, grid = _result(future)
        elapsed_ms = round((time.perf_counter() - start) * 1000, 1)
        attention = None
        if grid is not None:
            overlay = base64.b64encode(png_bytes(heatmap_overlay(picture, grid.numpy()))).decode("ascii")
            attention = Attention(grid=[[round(float(v), 4) for v in row] for row in grid.tolist()],
                                  overlay_png=f"data:image/png;base64,{overlay}")
        return VQAResponse(question=question, answers=[Answer(**a) for a in answers], attention=attention,
                           elapsed_ms=elapsed_ms)

    return app


def _submit(batcher: RequestBatcher, item: QuestionItem, arrival, settings: ServeSettings):
    try:
        return batcher.submit(item, arrival)
    except QueueFull:
        raise ApiError(503, "busy", f"the server has {settings.max_queue} questions waiting for the model; try "
                                    "again in a moment.") from None
    except BatcherClosed:
        raise ApiError(503, "shutting_down", SHUTTING_DOWN) from None


def _result(future):
    try:
        return future.result()
    except BatcherClosed:
        raise ApiError(503, "shutting_down", SHUTTING_DOWN) from None


def _check_question(question: str, settings: ServeSettings, processor) -> str:
    question = question.strip()
    if not question:
        raise ApiError(400, "empty_question", "the question is empty; type a question about the image.")
    if "\ufffd" in question:
        raise ApiError(400, "bad_question", "the question holds bytes that are not UTF-8 text; send it as UTF-8.")
    if len(question) > settings.max_question_chars:
        raise ApiError(400, "question_too_long", f"the question has {len(question)} characters; the limit is "
                                                 f"{settings.max_question_chars}.")
    try:  # what the model would refuse (e.g. nothing left after normalisation: only punctuation), refused here
        processor.questions([question])
    except ValueError as error:
        raise ApiError(400, "bad_question", str(error).replace("question 0 ", "the question ")) from None
    return question


def _example_path(settings: ServeSettings, example_id: int) -> Path:
    if not 0 <= example_id < len(settings.examples):
        raise ApiError(404, "unknown_example", f"there is no example {example_id}; GET /api/examples lists "
                                               f"{len(settings.examples)}.")
    return settings.examples[example_id]


def _read_image(upload: UploadFile | None, example: int | None, settings: ServeSettings):
    """The request's image as upright RGB: the uploaded file or the chosen example, never both."""
    if (upload is None) == (example is None):
        raise ApiError(400, "image_required", "send exactly one of 'image' (a file) and 'example' (an id).")
    source = _example_path(settings, example) if upload is None else upload.file.read()
    if isinstance(source, bytes) and not source:
        raise ApiError(400, "bad_image", "the uploaded image file is empty.")
    try:
        return as_rgb_image(source, settings.max_image_pixels, settings.max_image_side)
    except BadSampleError as error:
        if error.reason == "image too large":
            raise ApiError(413, "image_too_large", f"the image has more than {settings.max_image_pixels:,} pixels; "
                                                   "send a smaller one.") from None
        raise ApiError(400, "bad_image", "the file is not an image that can be decoded (send a JPEG, PNG, WebP, "
                                         f"BMP or GIF file): {error.reason}.") from None
    except DataError as error:
        raise ApiError(400, "bad_image", str(error)) from None


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.code, error.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}"
                             for e in error.errors())
        return error_response(422, "invalid_request", f"the request is not valid: {problems}.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, "http_error", str(error.detail))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, error: Exception) -> JSONResponse:
        # Anything unforeseen still answers in the documented shape; the traceback goes to the server's log.
        logger.exception("unhandled error while serving a request")
        return error_response(500, "internal_error", f"the server failed on this request ({type(error).__name__}); "
                                                     "its log has the details.")


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


class BodySizeLimit:
    """Refuses request bodies over ``max_bytes`` with 413 — at once from Content-Length, or as soon as a streamed
    body passes the limit — so an oversized upload is never read in full."""

    def __init__(self, app, max_bytes: int, timeout: float | None = None):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        received, exceeded, slow, started = 0, False, False, False
        deadline = None

        async def counting_receive():
            nonlocal received, exceeded, slow, deadline
            loop = asyncio.get_running_loop()
            deadline = deadline or (loop.time() + self.timeout if self.timeout else None)
            try:
                message = await (receive() if deadline is None else
                                 asyncio.wait_for(receive(), max(0.0, deadline - loop.time())))
            except asyncio.TimeoutError:
                slow = True
                raise BodyTooSlow from None
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                exceeded = True
                raise BodyTooLarge
            return message

        async def guarded_send(message):
            # Form parsing turns any error while reading into its own 400 reply; over the limit, ours replaces it.
            nonlocal started
            if (exceeded or slow) and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except (BodyTooLarge, BodyTooSlow):
            pass
        if exceeded and not started:
            await self._refuse(scope, receive, send)
        elif slow and not started:
            await error_response(408, "too_slow", f"the request body did not arrive within {self.timeout:.0f} s; "
                                                  "send it again on a faster connection.")(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        limit_mb = self.max_bytes / 2**20
        await error_response(413, "too_large", f"the request body is larger than {limit_mb:.1f} MB; send a smaller "
                                               "image.")(scope, receive, send)

