"""The labelling page of `teacher=human`: a Starlette app served by uvicorn from a thread of the training process.

Every request must carry the run's random token (`?token=` or an `X-Token` header), else 403: on a shared
machine, others can reach 127.0.0.1 too. The page (labelling_page.html, plain HTML and JS) asks `/api/task` what
the task is and what makes a segment better, asks `/api/next` for a query (or, when there is none, for the reason),
plays its two segments from `/api/video/...` side by side, posts the answer to `/api/answer` (and may take its last
one back through `/api/undo` while the round is open), and gives its query back through `/api/release` when its
tab closes; while it shows a query it asks `/api/state`, so that it notices another tab taking the query over or
the run finishing or going away. Rounds and queries are numbered from 1, as the page shows them.

A request the page would never send gets a 4xx with a one-line JSON error and one line on the run's console, never
a 500 or a traceback: a body over MAX_BODY_BYTES is 413; one that is not UTF-8 JSON, not an object or holds a value
of the wrong type is 400; a query that was never asked is 404, one already answered (or no longer open) 409.
"""

from __future__ import annotations

import json
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from teacher import ANSWER_LABELS, TeacherError
from utils import WriteError

PAGE = Path(__file__).resolve().parent / "labelling_page.html"
START_TIMEOUT_S = 30.0
MAX_BODY_BYTES = 64 * 1024  # the page's bodies are under 300 bytes
MAX_TEXT = 100  # characters kept of a labeller's name or a tab id
LOGGED_STATUSES = {400, 403, 405, 413}  # requests the page never makes; 404 and 409 come from several tabs


def refused(request: Request, status: int, message: str) -> JSONResponse:
    """A 4xx with a one-line JSON error, and (for a request the page would never make) one line on the console."""
    if status in LOGGED_STATUSES:
        print(f"labelling page: refused {request.method} {request.url.path} ({status}): {message}", file=sys.stderr,
              flush=True)  # fmt: skip
    return JSONResponse({"error": message}, status)


class TokenRequired(BaseHTTPMiddleware):
    def __init__(self, app: Starlette, token: str) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        given = request.query_params.get("token") or request.headers.get("x-token") or ""
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            return refused(request, 403, "a valid token is required: open the URL the training run printed")
        return await call_next(request)


async def json_object(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object, read no further than MAX_BODY_BYTES; HTTPException otherwise."""
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"the body may hold at most {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():  # a chunked body declares no length
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"the body may hold at most {MAX_BODY_BYTES} bytes")
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise HTTPException(400, "the body is not UTF-8") from None
    except ValueError as error:
        raise HTTPException(400, f"the body is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise HTTPException(400, f"the body is a JSON {type(value).__name__}; allowed: an object")
    return value


def number(body: dict[str, Any], key: str) -> int:
    """A round or query number (from 1)."""
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31:
        raise HTTPException(400, f"{key}={json.dumps(value)[:40]} is invalid: allowed: an integer >= 1")
    return value


def text(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise HTTPException(400, f"{key}={json.dumps(value)[:40]} is invalid: allowed: a string")
    return value[:MAX_TEXT]


class LabellingSource(Protocol):
    """What the page serves and records: human_teacher.HumanTeacher."""

    def task(self) -> dict[str, str]: ...
    def claim(self, tab: str = "", take_over: bool = False, name: str = "") -> dict[str, Any] | None: ...
    def page_state(self, tab: str = "", name: str = "") -> dict[str, Any]: ...
    def video(self, round_number: int, query: int, side: int) -> bytes | None: ...
    def answer(self, round_number: int, query: int, answer: str, labeller: str, tab: str = "") -> str: ...
    def undo(self, round_number: int, query: int, tab: str) -> tuple[str, dict[str, Any] | None]: ...
    def release(self, round_number: int, query: int, tab: str) -> bool: ...


def tab_and_name(request: Request) -> tuple[str, str]:
    """The asking tab's id and the name typed in it."""
    return request.query_params.get("tab", "")[:MAX_TEXT], request.query_params.get("name", "")[:MAX_TEXT]


def make_app(teacher: LabellingSource, token: str) -> Starlette:
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    async def task(request: Request) -> JSONResponse:
        return JSONResponse(teacher.task())

    async def next_query(request: Request) -> JSONResponse:
        tab, name = tab_and_name(request)
        query = teacher.claim(tab, take_over=request.query_params.get("take_over") == "1", name=name)
        return JSONResponse(query or teacher.page_state(tab, name))

    async def state(request: Request) -> JSONResponse:
        return JSONResponse(teacher.page_state(*tab_and_name(request)))

    async def video(request: Request) -> Response:
        params = request.path_params
        jpeg = teacher.video(params["round"], params["query"], params["side"])
        if jpeg is None:
            return refused(request, 404, "no such video in the open round")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def answer(request: Request) -> JSONResponse:
        body = await json_object(request)
        choice = body.get("answer")
        if not isinstance(choice, str) or choice not in ANSWER_LABELS:
            allowed = ", ".join(ANSWER_LABELS)
            raise HTTPException(400, f"answer={json.dumps(choice)[:40]} is invalid: allowed: {allowed}")
        round_number, query, labeller = number(body, "round"), number(body, "query"), text(body, "labeller")
        try:
            outcome = teacher.answer(round_number, query, choice, labeller, text(body, "tab"))
        except WriteError as error:  # the training thread stops the run with the same line
            return JSONResponse({"error": f"not recorded: {error}; the run stops"}, 503)
        if outcome == "missing":
            return refused(request, 404, f"round {round_number} has no query {query}")
        if outcome == "answered":
            return refused(request, 409, f"query {query} of round {round_number} was already answered in another "
                                         "tab; that answer stays")  # fmt: skip
        if outcome == "closed":
            return refused(request, 409, f"round {round_number} is closed: the run has all its answers")
        return JSONResponse({"recorded": True})

    async def undo(request: Request) -> JSONResponse:
        body = await json_object(request)
        round_number, query = number(body, "round"), number(body, "query")
        try:
            outcome, query_again = teacher.undo(round_number, query, text(body, "tab"))
        except WriteError as error:
            return JSONResponse({"error": f"not undone: {error}; the run stops"}, 503)
        if outcome == "missing":
            return refused(request, 404, f"round {round_number} has no query {query}")
        if outcome == "closed":
            return refused(request, 409, f"not undone: the run has already learnt from round {round_number}")
        if outcome == "not last":
            return refused(request, 409, f"not undone: query {query} of round {round_number} is not this tab's "
                                         "last answer")  # fmt: skip
        return JSONResponse(query_again)

    async def release(request: Request) -> JSONResponse:
        body = await json_object(request)
        released = teacher.release(number(body, "round"), number(body, "query"), text(body, "tab"))
        return JSONResponse({"released": released})

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return refused(request, error.status_code, error.detail)

    routes = [
        Route("/", page),
        Route("/api/task", task),
        Route("/api/next", next_query),
        Route("/api/state", state),
        Route("/api/video/{round:int}/{query:int}/{side:int}", video),
        Route("/api/answer", answer, methods=["POST"]),
        Route("/api/undo", undo, methods=["POST"]),
        Route("/api/release", release, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TokenRequired, token=token)],
                     exception_handlers={HTTPException: http_error})  # fmt: skip


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), or a one-line TeacherError (also checked when the run starts)."""
    try:
        return socket.create_server((host, port))
    except OSError as error:
        raise TeacherError(
            f"human_port={port} on human_host={host} could not be opened ({error.strerror}); "
            "allowed: a free port of an address of this machine, or human_port=0 for any free port"
        ) from None


class LabellingServer:
    """uvicorn in a daemon thread on a socket bound here, so that a port in use is one clear error."""

    def __init__(self, teacher: LabellingSource, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.token = secrets.token_urlsafe(16)
        config = uvicorn.Config(make_app(teacher, self.token), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)

    def start(self) -> str:
        """Bind, serve, and return the page's URL with its token once the server is up."""
        listening = bind(self.host, self.port)
        port = listening.getsockname()[1]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listening]}, daemon=True,
                                       name="labelling-server")  # fmt: skip
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise TeacherError(f"the labelling page did not start on {self.host}:{port}")
            time.sleep(0.05)
        return f"http://{self.host}:{port}/?token={self.token}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
