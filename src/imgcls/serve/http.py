"""The service's HTTP surface: the response bodies and error statuses as declared in its OpenAPI
schema, and the request handling that enforces the limits: the API key, a size-limited body, the
multipart upload (its file count)."""

import hmac
import logging
from typing import Any

from pydantic import BaseModel


class LabelProbability(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    """One uploaded image: its label, score and top labels, or the error that stopped it."""

    filename: str
    label: str | None = None
    score: float | None = None
    top_k: list[LabelProbability] = []
    error: str | None = None


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction]


class Overlay(BaseModel):
    label: str
    probability: float
    image: str  # a data: URL of a PNG: the image with the class's Grad-CAM map laid over it


class ExplainResponse(BaseModel):
    filename: str
    overlays: list[Overlay]


class Problem(BaseModel):
    """Every error response: one line saying what is wrong."""

    error: str


PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text}
    for code, text in (
        (400, "no file field, a text field, a malformed upload, or a truncated or corrupt image"),
        (401, "missing or wrong API key"),
        (413, "upload, file count or image pixels over the limit"),
        (415, "not multipart/form-data, or not an image"),
        (422, "a query parameter out of range"),
    )
}
EXPLAIN_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **PROBLEMS,
    409: {"model": Problem, "description": "this model cannot be explained (an ONNX file, or captum missing)"},
}

access_log = logging.getLogger("imgcls.serve.access")


class HTTPProblem(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def reason_status(reason: str) -> int:
    if "too many pixels" in reason:
        return 413
    if "not an image" in reason:
        return 415
    return 400


# The body /predict reads itself (multipart, with limits), described for the OpenAPI docs.
UPLOAD_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or several images (repeat the field)",
                        }
                    },
                }
            }
        },
    }
}


def check_api_key(headers: Any, api_key: str | None) -> None:
    """401 unless the request carries the key (X-API-Key or Authorization: Bearer)."""
    if not api_key:
        return
    given = headers.get("x-api-key") or ""
    auth = headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = given or auth[7:].strip()
    if not hmac.compare_digest(given.encode(), api_key.encode()):
        raise HTTPProblem(401, "missing or wrong API key (send it as X-API-Key or Authorization: Bearer)")


async def read_limited_body(request: Any, limit_mb: float) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit_mb`` (declared or sent)."""
    max_bytes = int(limit_mb * 1024 * 1024)
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise HTTPProblem(413, f"upload of {int(length) / 2**20:.1f} MB exceeds the limit of {limit_mb:g} MB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPProblem(413, f"upload exceeds the limit of {limit_mb:g} MB")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_files(headers: Any, body: bytes, max_files: int) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each file in the multipart field ``file``; 400 / 413 otherwise."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> Any:
        yield body
        yield b""

    try:
        form = await MultiPartParser(
            headers, stream(), max_files=max_files, max_fields=64, max_part_size=1 << 20
        ).parse()
    except MultiPartException as e:
        status = 413 if "Too many files" in str(e) else 400
        raise HTTPProblem(status, f"bad multipart upload: {e.message} (at most {max_files} files)") from None
    files = []
    for value in form.getlist("file"):
        if not isinstance(value, UploadFile):
            raise HTTPProblem(400, "the field 'file' must hold files, not text")
        files.append((value.filename or "upload", await value.read()))
    if not files:
        raise HTTPProblem(400, "no image in the form field 'file'")
    return files
