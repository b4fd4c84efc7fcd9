"""The web service: ``POST /predict``, ``POST /explain``, ``GET /model``, ``GET /health``, ``GET /``
(the page),
OpenAPI at ``/openapi.json`` (Swagger UI at ``/docs`` from the installed bundle, else a CDN).

Every bad input is a 4xx with a clear message (``{"error": ...}``), never a 5xx: a request that
is not multipart/form-data (415), a body over the upload limit (413), too many files (413), no
``file`` field (400), bytes that are no image (415), truncated or corrupt images (400), images
over the pixel limit — decompression bombs are refused from the header (413), a missing or wrong
API key (401), a bad query parameter (422), another site's page (403: see
:class:`~imgcls.serve.http.HostGuard`). In an upload of several images a bad one does not
cost the others their answers: it gets its own ``error`` in its place among the predictions; only
an upload whose every image is bad is answered with the 4xx of the first. Every status and body
is declared in the OpenAPI schema (checked by schemathesis in the tests). Each request is logged
in one line: method, path, status, images, milliseconds. Memory stays bounded under load: request
bodies are capped, decodes run one per core at most (not one slot per request, whose files
then all decoded at once), and decoded images wait in a bounded queue for the micro-batcher.
"""

# No "from __future__ import annotations" here: FastAPI reads the endpoints' annotations at
# run time, and Request is imported inside create_app.
import asyncio
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from imgcls.artifacts import model_name
from imgcls.data.image import ImageError, read_image
from imgcls.data.preprocess import eval_array, square_size
from imgcls.errors import UserError
from imgcls.serve.http import (
    EXPLAIN_PROBLEMS,
    PROBLEMS,
    UPLOAD_SCHEMA,
    ExplainResponse,
    HTTPProblem,
    PredictResponse,
    access_log,
    add_host_guard,
    check_api_key,
    exposure_note,
    one_line_errors,
    parse_files,
    read_limited_body,
    reason_status,
)

API_KEY_ENV = "IMGCLS_API_KEY"


@dataclass
class ServeConfig:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_upload_mb: float = 25.0
    max_files: int = 16
    max_pixels: int = 60_000_000
    cors_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)  # Host names besides this machine's (DNS rebinding)
    max_batch: int = 32
    max_wait_ms: float = 5.0
    top_k: int = 5
    device: str = "auto"
    precision: str = "auto"
    backend: str = "torch"  # torch | onnx | auto: predict's engine (imgcls.predict.choose)
    decoder: str = "auto"  # auto | cpu | cuda: who decodes JPEGs (imgcls.predict.decoders)

    def __post_init__(self) -> None:
        limits = {
            "max_upload_mb": (self.max_upload_mb, 0.001),
            "max_files": (self.max_files, 1),
            "max_pixels": (self.max_pixels, 1),
            "max_batch": (self.max_batch, 1),
            "max_wait_ms": (self.max_wait_ms, 0),
            "top_k": (self.top_k, 1),
        }
        for name, (value, least) in limits.items():
            if not value >= least:
                raise UserError(f"--{name.replace('_', '-')} must be at least {least}, not {value}")


class Service:
    """What the routes do, with the served model: decoding, /health, /model, /predict."""

    def __init__(self, cfg: ServeConfig, clf: Any) -> None:
        from imgcls.serve.batcher import MicroBatcher

        self.cfg, self.clf, self.pre = cfg, clf, clf.preprocess
        self.api_key = cfg.api_key or os.environ.get(API_KEY_ENV) or None
        from imgcls.runtime import physical_cores

        # decodes at once, whatever the requests: one per core (each may hold a 60-MP image)
        self.decode_slots = asyncio.Semaphore(max(1, physical_cores()))
        from imgcls.predict.decoders import UploadDecoder, model_gpu

        self.device = UploadDecoder(cfg.decoder, self.pre, gpu=model_gpu(clf), workers=physical_cores(),
                                    max_pixels=cfg.max_pixels)  # fmt: skip
        self.upload_slots = asyncio.Semaphore(16)  # request bodies held in memory at once
        self.batcher = MicroBatcher(clf.probabilities, max_batch=cfg.max_batch, max_wait=cfg.max_wait_ms / 1000)
        self.explainer: Any = None  # made on the first /explain
        self.explain_lock = threading.Lock()

    async def warm_up(self) -> None:
        """One forward pass before the first request: loading the backend and the first call's
        kernel set-up take seconds that a user's first request should not wait for."""
        from PIL import Image

        pre = self.pre
        blank = eval_array(Image.new("RGB", (pre.image_size, pre.image_size), (128, 128, 128)), pre)
        await asyncio.to_thread(self.clf.probabilities, blank[None])

    async def decode_capped(self, name: str, data: bytes) -> np.ndarray | HTTPProblem:
        """:meth:`decode` in a thread, once a decode slot is free."""
        async with self.decode_slots:
            return await asyncio.to_thread(self.decode, name, data)

    def decode(self, name: str, data: bytes) -> np.ndarray | HTTPProblem:
        on_device = self.device.decode(data)  # the GPU's nvJPEG where chosen; None: the CPU decodes it
        if on_device is not None:
            return on_device
        try:
            img = read_image(data, min_size=square_size(self.pre), max_pixels=self.cfg.max_pixels)
        except ImageError as e:
            return HTTPProblem(reason_status(str(e)), f"{name}: {e}")
        return eval_array(img, self.pre)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "auth": bool(self.api_key), "batches": self.batcher.batches,
                "images": self.batcher.images}  # fmt: skip

    def model_info(self) -> dict[str, Any]:
        info, pre = self.clf.info, self.pre
        return {
            "name": model_name(self.cfg.model), "architecture": info.arch, "task": info.task,
            "label_names": info.label_names, "positive_class": info.positive_class, "thresholds": info.thresholds,
            "preprocessing": {**pre.to_pretrained_cfg(), "resize_mode": pre.resize_mode},
            "created": info.provenance.get("created"), "explainable": self.explainable,
        }  # fmt: skip

    @property
    def explainable(self) -> bool:
        """A model directory (not an ONNX file), with captum installed."""
        import importlib.util

        return not str(self.cfg.model).lower().endswith(".onnx") and importlib.util.find_spec("captum") is not None

    async def explain(self, request: Any, top_k: int | None) -> dict[str, Any]:
        """Grad-CAM overlays of one uploaded image's top classes, from a copy of the model of its
        own (its hooks must not meet the micro-batcher's forward passes)."""
        check_api_key(request.headers, self.api_key)
        if not self.explainable:
            raise HTTPProblem(409, f"{model_name(self.cfg.model)} cannot be explained (an ONNX model, or no captum)")
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise HTTPProblem(415, "send the image as multipart/form-data in the form field 'file'")
        async with self.upload_slots:
            body = await read_limited_body(request, self.cfg.max_upload_mb)
            (name, data), *_ = await parse_files(request.headers, body, 1)
        pixels = await self.decode_capped(name, data)
        if isinstance(pixels, HTTPProblem):
            raise pixels
        request.state.images = 1
        return await asyncio.to_thread(self._explain, name, pixels, self.cfg.top_k if top_k is None else top_k)

    def _explain(self, name: str, pixels: np.ndarray, k: int) -> dict[str, Any]:
        import base64

        from imgcls.explain import Explainer, overlay, png_bytes
        from imgcls.predict import Classifier

        with self.explain_lock:
            if self.explainer is None:
                clf = Classifier.load(self.cfg.model, device=self.cfg.device, precision="fp32", backend="torch")
                try:
                    self.explainer = Explainer(clf)
                except UserError as err:  # no map to weigh (a vision transformer's tokens)
                    raise HTTPProblem(409, str(err)) from None
            (e,) = self.explainer.explain([(name, pixels)], top=min(k, 3))
        overlays = [
            {"label": label, "probability": round(p, 6),
             "image": "data:image/png;base64,"
             + base64.b64encode(png_bytes(overlay(e.pixels, heat, layer=e.layer))).decode()}
            for label, p, heat in zip(e.labels, e.probabilities, e.maps, strict=True)
        ]  # fmt: skip
        return {"filename": name, "overlays": overlays}

    async def predict(self, request: Any, top_k: int | None) -> dict[str, Any]:
        check_api_key(request.headers, self.api_key)
        k = self.cfg.top_k if top_k is None else top_k
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise HTTPProblem(415, "send images as multipart/form-data in the form field 'file'")
        async with self.upload_slots:
            body = await read_limited_body(request, self.cfg.max_upload_mb)
            files = await parse_files(request.headers, body, self.cfg.max_files)
            del body
            decoded = await asyncio.gather(*(self.decode_capped(n, d) for n, d in files))
        request.state.images = len(files)
        good = [a for a in decoded if not isinstance(a, HTTPProblem)]
        if not good:  # every image is bad (a single bad image too): the request failed
            raise next(a for a in decoded if isinstance(a, HTTPProblem))
        probs = iter(await self.batcher.submit(np.stack(good)))
        predictions = [
            self._prediction(name, pixels, probs, k) for (name, _), pixels in zip(files, decoded, strict=True)
        ]
        return {"model": model_name(self.cfg.model), "predictions": predictions}

    def _prediction(self, name: str, pixels: Any, probs: Any, k: int) -> dict[str, Any]:
        if isinstance(pixels, HTTPProblem):
            return {"filename": name, "error": pixels.message}
        row = self.clf.row(name, next(probs), top_k=k)
        top = [{"label": lab, "probability": prob} for lab, prob in row["top_k"].items()]
        score = None if row["score"] is None else round(float(row["score"]), 6)
        return {"filename": name, "label": row["label"], "score": score, "top_k": top}


def load_classifier(cfg: ServeConfig) -> Any:
    """The served model on the engine ``cfg.backend`` names; ``auto``: predict's rule
    (:func:`imgcls.predict.choose.engine`: float32 unless ``cfg.precision`` says otherwise, on ONNX
    Runtime where model.onnx is current, else PyTorch)."""
    from imgcls.console import info
    from imgcls.predict import Classifier
    from imgcls.predict.choose import engine

    backend, precision = engine(cfg.model, backend=cfg.backend, precision=cfg.precision, device=cfg.device, say=info)
    return Classifier.load(cfg.model, device=cfg.device, precision=precision, backend=backend)


def create_app(cfg: ServeConfig, classifier: Any = None) -> Any:
    """The FastAPI application (the classifier is loaded here unless given)."""
    try:
        from fastapi import FastAPI
        from fastapi.middleware.cors import CORSMiddleware
    except ImportError as e:
        raise UserError("imgcls serve needs FastAPI and uvicorn: pip install 'imgcls[serve]'") from e

    service = Service(cfg, classifier or load_classifier(cfg))

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> Any:
        await service.warm_up()
        yield
        await service.batcher.stop()

    docs_assets = _swagger_ui_assets()
    app = FastAPI(
        title="imgcls",
        version="1",
        description=f"Image classification with {model_name(cfg.model)}",
        lifespan=lifespan,
        docs_url=None if docs_assets else "/docs",  # without the bundle: FastAPI's, from a CDN
        redoc_url=None,
    )
    if docs_assets:
        _mount_offline_docs(app, docs_assets)
    if cfg.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"])  # fmt: skip
    # Other sites' pages (DNS rebinding): with an API key the key admits a request whatever name
    # reached the server (a reverse proxy may pass its public one), so only the Origin is checked.
    add_host_guard(app, None if service.api_key else cfg.host, cfg.port, origins=cfg.cors_origins,
                   hint=" (allow a page's origin with --cors-origin)", allowed=cfg.allowed_hosts)  # fmt: skip
    _add_error_handling(app)  # after the guard: its refusals are logged too
    _add_routes(app, service)
    return app


def _add_error_handling(app: Any) -> None:
    """Every error in the API's one shape, ``{"error": ...}``, and one log line per request."""
    from fastapi import Request

    one_line_errors(app, {HTTPProblem: lambda e: (e.status, e.message)})

    @app.middleware("http")
    async def log_access(request: Request, call_next: Any) -> Any:
        t0 = time.perf_counter()
        request.state.images = 0
        response = await call_next(request)
        n = request.state.images
        access_log.info(
            "%s %s %d %d image%s %.1f ms", request.method, request.url.path, response.status_code,
            n, "" if n == 1 else "s", 1000 * (time.perf_counter() - t0),
        )  # fmt: skip
        return response


def _add_routes(app: Any, service: Service) -> None:
    from fastapi import Query, Request
    from fastapi.responses import HTMLResponse

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files("imgcls.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    foreign = {403: PROBLEMS[403]}  # the only error of a GET: another site's page (HostGuard)

    @app.get("/health", responses=foreign)
    async def health() -> dict[str, Any]:
        """Liveness, and whether /predict needs an API key."""
        return service.health()

    @app.get("/model", responses=foreign)
    async def model_info() -> dict[str, Any]:
        """Architecture, task, label names and preprocessing of the served model."""
        return service.model_info()

    @app.post("/explain", openapi_extra=UPLOAD_SCHEMA, response_model=ExplainResponse, responses=EXPLAIN_PROBLEMS)
    async def explain(request: Request, top_k: int | None = Query(None, ge=1, le=1000)) -> dict[str, Any]:
        """Where in one image (the form field ``file``) the model finds the evidence for its top
        classes (up to 3): Grad-CAM overlays as PNG data URLs. ONNX models cannot be explained (409)."""
        return await service.explain(request, top_k)

    @app.post("/predict", openapi_extra=UPLOAD_SCHEMA, response_model=PredictResponse, responses=PROBLEMS)
    async def predict(request: Request, top_k: int | None = Query(None, ge=1, le=1000)) -> dict[str, Any]:
        """Classify one or several images sent as multipart/form-data in the field ``file``
        (repeat it for several). ``top_k``: how many labels with probabilities per image. An image
        that cannot be used gets its ``error`` in its place; the others are answered."""
        return await service.predict(request, top_k)


def _mount_offline_docs(app: Any, assets: str) -> None:
    """/docs: Swagger UI from the installed bundle's files, so it needs no internet."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="openapi.json",
            title="imgcls API",
            swagger_js_url="docs-assets/swagger-ui-bundle.js",
            swagger_css_url="docs-assets/swagger-ui.css",
            swagger_favicon_url="docs-assets/favicon-32x32.png",
        )


def _swagger_ui_assets() -> str | None:
    """The folder of Swagger UI's files from the ``swagger-ui-bundle-v2`` package, if installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    path = str(swagger_ui_path)
    return path if os.path.isfile(os.path.join(path, "swagger-ui-bundle.js")) else None


def check_address(host: str, port: int) -> None:
    """A clear error for a port out of range or in use, before the model is loaded."""
    import socket

    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, not {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            import errno

            hint = "choose another --port" if e.errno == errno.EADDRINUSE else "check --host"
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror} ({hint})") from None


def serve(cfg: ServeConfig) -> None:
    import uvicorn

    check_address(cfg.host, cfg.port)
    app = create_app(cfg)
    note = None if cfg.api_key else exposure_note(cfg.host, cfg.allowed_hosts)  # a key admits any name
    if note:
        from imgcls.console import info

        info(f"imgcls serve: {note}")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", access_log=False)
