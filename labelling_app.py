"""The labelling page of `teacher=human`: a Starlette app served by uvicorn from a thread of the training process.

Every request must carry the run's random token (`?token=` or an `X-Token` header), else 403: on a shared
machine, others can reach 127.0.0.1 too. The page (labelling_page.html, plain HTML and JS) asks `/api/next` for a
query, plays its two segments from `/api/video/...` side by side and posts the answer to `/api/answer`.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from teacher import ANSWER_LABELS, TeacherError

PAGE = Path(__file__).resolve().parent / "labelling_page.html"
START_TIMEOUT_S = 30.0


class LabellingSource(Protocol):
    """What the page serves: human_teacher.HumanTeacher."""

    step: int

    def claim(self) -> dict[str, Any] | None: ...
    def progress(self) -> str: ...
    def video(self, round_index: int, query: int, side: int) -> bytes | None: ...
    def answer(self, round_index: int, query: int, answer: str, labeller: str) -> bool: ...


class TokenRequired(BaseHTTPMiddleware):
    def __init__(self, app: Starlette, token: str) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        given = request.query_params.get("token") or request.headers.get("x-token") or ""
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            return PlainTextResponse("a valid token is required: open the URL the training run printed", 403)
        return await call_next(request)


def make_app(teacher: LabellingSource, token: str) -> Starlette:
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    async def next_query(request: Request) -> JSONResponse:
        query = teacher.claim()
        return JSONResponse(query or {"waiting": teacher.progress(), "step": teacher.step})

    async def video(request: Request) -> Response:
        params = request.path_params
        jpeg = teacher.video(params["round"], params["query"], params["side"])
        if jpeg is None:
            return PlainTextResponse("no such video in the open round", 404)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def answer(request: Request) -> JSONResponse:
        body = await request.json()
        choice = body.get("answer")
        if choice not in ANSWER_LABELS:
            return JSONResponse({"error": f"answer={choice!r}; allowed: {', '.join(ANSWER_LABELS)}"}, 400)
        try:
            round_index, query = int(body["round"]), int(body["query"])
        except (KeyError, TypeError, ValueError):
            return JSONResponse({"error": "round and query must be integers"}, 400)
        if not teacher.answer(round_index, query, choice, str(body.get("labeller", ""))[:100]):
            return JSONResponse({"error": "this query is already answered or no longer open"}, 409)
        return JSONResponse({"recorded": True})

    routes = [
        Route("/", page),
        Route("/api/next", next_query),
        Route("/api/video/{round:int}/{query:int}/{side:int}", video),
        Route("/api/answer", answer, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TokenRequired, token=token)])


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
