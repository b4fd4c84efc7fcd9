"""The service's HTTP surface: the response bodies and error statuses as declared in its OpenAPI
schema, and the request handling that enforces the limits: the API key, a size-limited body, the
multipart upload (its file count), and the guard against other sites' pages (DNS rebinding) that
``imgcls serve`` and ``imgcls review`` share."""

import hmac
import ipaddress
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from imgcls.errors import UserError


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
        (403, "a Host that is not this server's name, or an Origin that is not its page (nor a --cors-origin)"),
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


def one_line_errors(app: Any, refusals: Mapping[type[Exception], Callable[[Any], tuple[int, str]]]) -> None:
    """Every error ``app`` answers in the one shape ``{"error": "one line"}`` (``imgcls serve``
    and ``imgcls review`` alike): its own refusals, each exception type with its status and line
    (``refusals``), and a malformed request, 422 naming the parameter or field (``top_k``,
    ``index``: not where it was sent) and what is wrong with it."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    def answer(say: Callable[[Any], tuple[int, str]]) -> Callable[[Any, Any], Any]:
        async def handler(_: Any, exc: Any) -> JSONResponse:
            status, message = say(exc)
            return JSONResponse({"error": message}, status_code=status)

        return handler

    for kind, say in refusals.items():
        app.add_exception_handler(kind, answer(say))

    async def invalid(_: Any, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = tuple(first.get("loc", ()))
        named = len(loc) > 1 and not isinstance(loc[1], int)  # ("query", "top_k"); ("body", 12): a JSON position
        where = ".".join(str(part) for part in (loc[1:] if named else loc)) or "request"
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)


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


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
EVERY_INTERFACE = ("", "0.0.0.0", "::")
ANY_ADDRESS = "*ip*"  # in a set of names: a Host that is an IP address passes (a wildcard bind)


def host_names(host: str, allowed: Iterable[str] = ()) -> frozenset[str]:
    """The names (port left out) a browser may reach a server bound to ``host`` by, and the
    ``allowed`` ones (``--allowed-host``: a DNS alias, a reverse proxy's name).

    Bound to every interface (0.0.0.0, ::) the server answers to this machine's own names (its
    host name, short and fully qualified, and ``NAME.local``, mDNS's), loopback's and any IP address
    (:data:`ANY_ADDRESS`). An address is safe to accept: DNS rebinding needs a name the attacker
    controls, and a browser sends an address as the Host only for a page loaded from that address,
    which is this server (or a forward to it); accepting every address saves guessing which are
    this machine's (containers, NAT, VPNs). A name is not: ``evil.example`` made to resolve to this
    machine is exactly the attack, so any other name must be allowed by the user."""
    extra = {_allowed_name(n) for n in allowed if n.strip()}
    name = host.strip().strip("[]").lower()
    if name in EVERY_INTERFACE:
        import socket

        own = {socket.gethostname().lower(), socket.getfqdn().lower()} - {"", "localhost"}
        own |= {n.split(".")[0] for n in own} | {n.split(".")[0] + ".local" for n in own}
        return frozenset((*own, *LOOPBACK_NAMES, ANY_ADDRESS, *extra))
    try:
        ip: Any = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    own_name = f"[{name}]" if ip is not None and ip.version == 6 else name
    loopback = name == "localhost" or (ip is not None and ip.is_loopback)
    return frozenset((own_name, *LOOPBACK_NAMES, *extra) if loopback else (own_name, *extra))


def _allowed_name(given: str) -> str:
    """An ``--allowed-host`` value as a Host header's name: ``name``, ``name:port``, an address."""
    given = given.strip().lower()
    if "/" in given or any(c.isspace() for c in given):
        raise UserError(f"--allowed-host {given}: give a host name (like review.example), not a URL")
    try:
        ip = ipaddress.ip_address(given.strip("[]"))
    except ValueError:
        return _hostname(given)
    return f"[{ip}]" if ip.version == 6 else str(ip)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _hostname(netloc: str) -> str:
    """``name`` of ``name:port``, ``[v6]`` of ``[v6]:port``, lower case."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[: netloc.find("]") + 1]
    return netloc.partition(":")[0]


class HostGuard:
    """ASGI middleware against DNS rebinding and other sites' pages, like Jupyter's and Vite's.

    A page on ``evil.example`` whose name is made to resolve to 127.0.0.1 reaches a loopback
    server from the user's own browser; what gives it away is the ``Host`` its requests carry
    (``evil.example``) and, on a POST or a cross-origin fetch, the ``Origin``. So: the ``Host``'s
    name must be one ``names`` holds (None: any). Its port is not checked: a rebinding page cannot
    choose the name, whatever the port, and a tunnel (``ssh -L 9000:127.0.0.1:8765``) must work. An
    ``Origin`` must be the page's own (scheme aside, the same ``host:port`` as the ``Host``) or
    one of ``origins`` (``*``: any). Refusals are 403 ``{"error": "one line"}``. Starlette's
    TrustedHostMiddleware checks only the Host, and answers 400 in plain text.
    """

    def __init__(self, app: Any, names: frozenset[str] | None, address: str, origins: Iterable[str] = (),
                 hint: str = "") -> None:  # fmt: skip
        self.app, self.names, self.address, self.hint = app, names, address, hint
        self.origins = {o.rstrip("/").lower() for o in origins}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            wanted = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in (b"host", b"origin")}
            refusal = self.refusal(wanted)
            if refusal is not None and scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})  # policy violation
            if refusal is not None:
                return await _send_403(send, refusal)
        await self.app(scope, receive, send)

    def refusal(self, headers: dict[str, str]) -> str | None:
        """Why a request with these (lower-case) headers is refused, or None."""
        host = headers.get("host", "")
        name = _hostname(host)
        if self.names is not None and name not in self.names and not (ANY_ADDRESS in self.names and _is_address(name)):
            known = ", ".join(sorted(n if n != ANY_ADDRESS else "any IP address" for n in self.names))
            return (f"Host {host or '(none)'} is not this server's name ({known}): open {self.address}"
                    f"{f', or allow the name with --allowed-host {name}' if name else ''}")  # fmt: skip
        origin = headers.get("origin")
        if origin is None or "*" in self.origins or origin.rstrip("/").lower() in self.origins:
            return None
        scheme, _, netloc = origin.lower().partition("://")
        if scheme in ("http", "https") and netloc == host.lower():
            return None
        return f"Origin {origin} is not this server's page: requests from other sites' pages are refused{self.hint}"


async def _send_403(send: Any, message: str) -> None:
    body = json.dumps({"error": message}, ensure_ascii=False, separators=(",", ":")).encode()  # as JSONResponse
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def add_host_guard(app: Any, host: str | None, port: int, *, origins: Iterable[str] = (), hint: str = "",
                   allowed: Iterable[str] = ()) -> None:  # fmt: skip
    """Guard a FastAPI ``app`` served on ``host``:``port`` (:class:`HostGuard`), answering to the
    names :func:`host_names` gives (``allowed`` among them); ``host`` None checks only the Origin
    (an app not tied to an address: tests, another server)."""
    names = None if host is None else host_names(host, allowed)
    app.add_middleware(HostGuard, names=names, address=page_address(host or "127.0.0.1", port),
                       origins=list(origins), hint=hint)  # fmt: skip


def page_address(host: str, port: int) -> str:
    """The URL to open for a server bound to ``host``:``port`` (bound to every interface: this
    machine's name, which other machines can use too)."""
    if host.strip().strip("[]") in EVERY_INTERFACE:
        import socket

        host = socket.gethostname() or "127.0.0.1"
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def exposure_note(host: str, allowed: Iterable[str] = ()) -> str | None:
    """The startup line for a server bound to every interface: the names it answers to, and how to
    allow another (None for any other bind: it answers to that address's own name)."""
    if host.strip().strip("[]") not in EVERY_INTERFACE:
        return None
    names = sorted(n for n in host_names(host, allowed) if n != ANY_ADDRESS)
    return (f"against other sites' pages (DNS rebinding) it answers only to these names and any IP address: "
            f"{', '.join(names)}; allow another name with --allowed-host NAME")  # fmt: skip
