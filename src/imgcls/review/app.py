"""The review page and its API, a FastAPI app like ``imgcls serve``'s (loopback by default).

``GET /`` the page; ``GET /api/state`` the queue, the classes, the decisions so far, where to
start and the keys (:mod:`~imgcls.review.keys`, the page's legend and dispatch); ``GET
/api/image/{index}`` an item's image (``?which=b`` the image a leak copies, ``?which=frame`` a
crop's whole frame with its box drawn; only the queue's images are served: nothing else on the
disk can be read through it); ``POST /api/decide`` and ``POST /api/undo`` change the decisions
(saved before they are answered; a relabel to a label that is not a class yet needs
``new_class: true``); ``GET /health``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, Field

from imgcls.errors import UserError
from imgcls.review.keys import KEYS, LABEL_KEYS, public_keys
from imgcls.review.session import Session
from imgcls.serve.http import add_host_guard, one_line_errors


class Decision(BaseModel):
    index: int = Field(ge=0)
    action: str
    label: str = ""
    new_class: bool = False  # a relabel to a label that is not one of the classes yet, confirmed
    key: str | None = None  # the item the page showed: refused if ``index`` is another one


class Problem(BaseModel):
    error: str


def create_review_app(session: Session, *, hint: str = "", host: str | None = None, port: int = 8765,
                      allowed: Iterable[str] = ()) -> Any:  # fmt: skip
    """The app served on ``host``:``port``, answering only to that address's names (and the
    ``allowed`` ones) and its own page (``host`` None: any name, for an app not tied to an address;
    other pages still refused)."""
    try:
        from fastapi import FastAPI, Query
        from fastapi.responses import HTMLResponse, JSONResponse, Response
    except ImportError as e:
        raise UserError("imgcls review needs FastAPI and uvicorn: pip install 'imgcls[serve]'") from e

    app = FastAPI(title="imgcls review", docs_url=None, redoc_url=None)
    problems: dict[int | str, dict[str, Any]] = {400: {"model": Problem}, 404: {"model": Problem}}
    one_line_errors(app, {UserError: lambda e: (400, str(e))})  # a refused decision: 400
    add_host_guard(app, host, port, allowed=allowed)  # DNS rebinding: other sites' pages neither read nor decide

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        from importlib import resources

        return resources.files("imgcls.review").joinpath("static/review.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", **session.counts()}

    @app.get("/api/state")
    def state() -> dict[str, Any]:
        cwd = os.getcwd()
        return {"items": [it.public(i, cwd) for i, it in enumerate(session.items)], "classes": session.classes,
                "decisions": session.decisions(), "position": session.position(), "counts": session.counts(),
                "out": str(session.out), "multilabel": session.multilabel, "hint": hint, "mode": session.mode,
                "hint_note": session.hint_note, "given_classes": session.given_classes,
                "keys": public_keys(LABEL_KEYS if session.mode == "label" else KEYS)}  # fmt: skip

    @app.get("/api/image/{index}", responses={200: {"content": {"image/jpeg": {}}}, **problems})
    def image(index: int, which: str = Query("a", pattern="^(a|b|frame)$")) -> Response:
        from imgcls.data.image import ImageError

        if not 0 <= index < len(session.items):
            return JSONResponse({"error": f"no item {index}"}, status_code=404)
        if which == "b" and not session.items[index].other:
            return JSONResponse({"error": f"item {index} has no second image"}, status_code=404)
        if which == "frame" and not session.items[index].box:
            return JSONResponse({"error": f"item {index} is a whole image, not a crop"}, status_code=404)
        try:
            data = session.image(index, which)
        except (ImageError, UserError, OSError, ValueError) as e:
            return JSONResponse({"error": f"cannot show this image: {e}"}, status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/decide", responses=problems)
    def decide(d: Decision) -> dict[str, Any]:
        return session.decide(d.index, d.action, d.label, new_class=d.new_class, key=d.key)

    @app.post("/api/undo", responses=problems)
    def undo() -> dict[str, Any]:
        return session.undo()

    return app
