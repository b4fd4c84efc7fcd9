"""The web service: API answers, bad input gets a 4xx (never a 5xx), API key, micro-batching,
and the page in a real browser (headless Chromium through Playwright)."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from PIL import Image

from imgfactory import broken_files, class_image, jpeg_bytes, png_bomb

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from imgcls.predict import Classifier  # noqa: E402
from imgcls.serve.app import ServeConfig, create_app  # noqa: E402
from imgcls.serve.batcher import MicroBatcher  # noqa: E402
from localnet import free_port  # noqa: E402


@pytest.fixture(scope="module")
def client(trained: dict) -> TestClient:
    cfg = ServeConfig(model=str(trained["model"]), max_upload_mb=1.0, max_files=3, max_pixels=1_000_000)
    with TestClient(create_app(cfg), base_url=f"http://127.0.0.1:{cfg.port}") as c:  # the name it is bound to
        yield c


def _image(k: int, seed: int = 0) -> bytes:
    return jpeg_bytes(class_image(k, np.random.default_rng(seed), (64, 48)))


def test_model_health_and_page(client: TestClient, trained: dict) -> None:
    m = client.get("/model").json()
    assert m["label_names"] == ["cat", "dog", "fox"] and m["task"] == "multiclass"
    assert m["preprocessing"]["input_size"] == [3, 32, 32] and m["architecture"] == "lenet"
    assert m["name"] == trained["model"].parent.name  # the run's name, not "model"
    assert client.get("/health").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and "Drop images here" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    docs = client.get("/docs")
    assert docs.status_code == 200 and "docs-assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/docs-assets" not in spec["paths"]
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"]["items"]["format"] == "binary"  # the docs page offers an upload
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_predict_one_and_several_images(client: TestClient, trained: dict) -> None:
    files = [
        ("file", ("a.jpg", _image(0), "image/jpeg")),
        ("file", ("b.jpg", _image(2, 1), "image/jpeg")),
    ]
    r = client.post("/predict", files=files, params={"top_k": 2})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p["filename"] for p in preds] == ["a.jpg", "b.jpg"]
    assert all(len(p["top_k"]) == 2 and p["top_k"][0]["label"] == p["label"] for p in preds)
    clf = Classifier.load(trained["model"])
    local = clf.predict(Image.open(io.BytesIO(_image(0))), top_k=2)[0]
    assert preds[0]["label"] == local["label"] and preds[0]["score"] == pytest.approx(local["score"], abs=1e-6)


def test_a_bad_image_among_good_ones_gets_its_own_error(
    client: TestClient, trained: dict, caplog: pytest.LogCaptureFixture
) -> None:
    files = [
        ("file", ("a.jpg", _image(0), "image/jpeg")),
        ("file", ("notes.jpg", b"not an image at all", "image/jpeg")),
        ("file", ("b.jpg", _image(2, 1), "image/jpeg")),
    ]
    with caplog.at_level("INFO", logger="imgcls.serve.access"):
        r = client.post("/predict", files=files, params={"top_k": 1})
    assert r.status_code == 200
    a, bad, b = r.json()["predictions"]
    assert (a["filename"], bad["filename"], b["filename"]) == ("a.jpg", "notes.jpg", "b.jpg")
    assert bad["label"] is None and bad["top_k"] == [] and "not an image" in bad["error"]
    assert bad["score"] is None  # an error row has no label and no score: null both, as the schema and README say
    row = client.get("/openapi.json").json()["components"]["schemas"]["Prediction"]["properties"]
    assert {"type": "null"} in row["label"]["anyOf"] and {"type": "null"} in row["score"]["anyOf"]
    clf = Classifier.load(trained["model"])
    for got, data in ((a, _image(0)), (b, _image(2, 1))):  # the good ones are answered as alone
        assert got["error"] is None and got["label"] == clf.predict(Image.open(io.BytesIO(data)))[0]["label"]
    # one line per request: method, path, status, images, milliseconds
    (line,) = [rec.getMessage() for rec in caplog.records if rec.name == "imgcls.serve.access"]
    assert line.startswith("POST /predict 200 3 images ") and line.endswith(" ms")
    only_bad = [("file", ("x.jpg", b"junk", "image/jpeg")), ("file", ("y.jpg", b"", "image/jpeg"))]
    r = client.post("/predict", files=only_bad)  # every image bad: the request failed
    assert r.status_code == 415 and r.json()["error"].startswith("x.jpg: not an image")


@pytest.mark.parametrize(
    "name, make, status, words",
    [
        ("notes.jpg", lambda tmp: b"hello, not an image" * 20, 415, "not an image"),
        ("empty.jpg", lambda tmp: b"", 400, "empty"),
        ("bomb.png", lambda tmp: png_bomb(), 413, "too many pixels"),
        ("big.jpg", lambda tmp: _image(0) + b"\0" * (2 << 20), 413, "exceeds the limit"),
        ("truncated.jpg", lambda tmp: (tmp / "truncated.jpg").read_bytes(), 400, "truncated"),
        ("corrupt.png", lambda tmp: (tmp / "corrupt.png").read_bytes(), 400, "corrupt"),
    ],
)
def test_bad_uploads_get_a_clear_4xx(
    client: TestClient, tmp_path: Path, name: str, make: object, status: int, words: str
) -> None:
    broken_files(tmp_path)
    r = client.post("/predict", files=[("file", (name, make(tmp_path), "image/jpeg"))])  # type: ignore[operator]
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_malformed_requests(client: TestClient) -> None:
    assert client.post("/predict", content=b"raw bytes", headers={"content-type": "image/jpeg"}).status_code == 415
    r = client.post("/predict", data={"other": "x"}, files=[("x", ("a.jpg", _image(0), "image/jpeg"))])
    assert r.status_code == 400 and "field 'file'" in r.json()["error"]
    r = client.post(
        "/predict",
        data={"file": "text instead of a file"},
        files=[("x", ("a.jpg", b"1", "image/jpeg"))],
    )
    assert r.status_code == 400
    many = [("file", (f"{i}.jpg", _image(0), "image/jpeg")) for i in range(4)]
    r = client.post("/predict", files=many)
    assert r.status_code == 413 and "at most 3 files" in r.json()["error"]
    for value in (0, 1001, "x"):
        r = client.post("/predict", files=[("file", ("a.jpg", _image(0), "image/jpeg"))], params={"top_k": value})
        assert r.status_code == 422 and r.json()["error"].startswith("top_k: ")  # the API's one error shape
    body = b"--b\r\nContent-Disposition: form-data; name=file; filename=a.jpg\r\n\r\nabc"  # no closing boundary
    r = client.post("/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert 400 <= r.status_code < 500


def test_api_key_is_required_when_set(trained: dict) -> None:
    cfg = ServeConfig(model=str(trained["model"]), api_key="s3cret")
    with TestClient(create_app(cfg)) as c:
        files = [("file", ("a.jpg", _image(0), "image/jpeg"))]
        assert c.post("/predict", files=files).status_code == 401
        assert c.post("/predict", files=files, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post("/predict", files=files, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/predict", files=files, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/health").json()["auth"] is True
        assert "access-control-allow-origin" not in c.get("/model", headers={"Origin": "http://x"}).headers


def test_only_its_own_names_and_pages_reach_it(trained: dict) -> None:
    """DNS rebinding: a web page whose name is made to resolve to 127.0.0.1 reaches the loopback
    server under its own name (Host) and origin (Origin). Without an API key both are refused;
    the server's own names and page, and a --cors-origin, pass."""
    clf = Classifier.load(trained["model"])
    files = [("file", ("a.jpg", _image(0), "image/jpeg"))]
    cfg = ServeConfig(model=str(trained["model"]), port=8000, cors_origins=["http://app.example"])
    with TestClient(create_app(cfg, clf), base_url="http://evil.example:8000") as evil:
        for r in (evil.get("/"), evil.get("/model"), evil.post("/predict", files=files)):
            assert r.status_code == 403, r.text
            assert r.json()["error"].startswith("Host evil.example:8000 is not this server's name")
    with TestClient(create_app(cfg, clf), base_url="http://127.0.0.1:8000") as c:
        for origin in ("http://evil.example:8000", "http://127.0.0.1:9", "null"):
            r = c.post("/predict", files=files, headers={"Origin": origin})
            assert r.status_code == 403 and "not this server's page" in r.json()["error"]
            assert c.post("/explain", files=files, headers={"Origin": origin}).status_code == 403
        for host in ("localhost:8000", "[::1]:8000", "LocalHost", "127.0.0.1:9000"):  # ssh -L 9000:...
            assert c.get("/model", headers={"Host": host}).status_code == 200
        assert c.post("/predict", files=files, headers={"Origin": "http://127.0.0.1:8000"}).status_code == 200
        r = c.post("/predict", files=files, headers={"Host": "localhost:9000", "Origin": "http://localhost:9000"})
        assert r.status_code == 200
        r = c.post("/predict", files=files, headers={"Origin": "http://app.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
    # bound to every interface: this machine's names and addresses, and the names the user allows
    exposed = ServeConfig(model=str(trained["model"]), host="0.0.0.0", port=8000, allowed_hosts=["gpu-box.lan"])
    with TestClient(create_app(exposed, clf), base_url="http://gpu-box.lan:8000") as c:
        assert c.get("/model").status_code == 200
        assert c.post("/predict", files=files, headers={"Origin": "http://gpu-box.lan:8000"}).status_code == 200
        assert c.post("/predict", files=files, headers={"Origin": "http://evil.example"}).status_code == 403
        r = c.post("/predict", files=files, headers={"Host": "evil.example:8000", "Origin": "http://evil.example:8000"})
        assert r.status_code == 403 and "--allowed-host evil.example" in r.json()["error"]


def test_with_an_api_key_any_name_but_no_foreign_page(trained: dict) -> None:
    """With --api-key the key admits a request to /predict whatever name reached the server (a
    reverse proxy may pass its public name); a foreign page's Origin is still refused."""
    cfg = ServeConfig(model=str(trained["model"]), api_key="s3cret")
    files = [("file", ("a.jpg", _image(0), "image/jpeg"))]
    key = {"X-API-Key": "s3cret"}
    with TestClient(create_app(cfg), base_url="http://api.example") as c:
        assert c.get("/model").status_code == 200
        assert c.post("/predict", files=files, headers=key).status_code == 200
        assert c.post("/predict", files=files).status_code == 401
        r = c.post("/predict", files=files, headers={**key, "Origin": "http://evil.example"})
        assert r.status_code == 403 and "not this server's page" in r.json()["error"]
        assert c.post("/predict", files=files, headers={**key, "Origin": "http://api.example"}).status_code == 200


def test_micro_batcher_groups_requests_and_never_mixes_them_up() -> None:
    calls: list[int] = []

    def infer(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        time.sleep(0.01)
        return batch.reshape(len(batch), -1)[:, :1].astype(np.float64)  # echo each image's id

    async def main() -> list[np.ndarray]:
        b = MicroBatcher(infer, max_batch=16, max_wait=0.02, max_queued=4)
        jobs = [b.submit(np.full((1 + i % 3, 1, 1, 3), i, np.uint8)) for i in range(30)]
        out = await asyncio.gather(*jobs)
        await b.stop()
        return out

    out = asyncio.run(main())
    for i, probs in enumerate(out):
        assert probs.shape == (1 + i % 3, 1) and (probs == i).all()
    assert max(calls) > 1 and sum(calls) == sum(1 + i % 3 for i in range(30))


@pytest.fixture(scope="module")
def server(trained: dict) -> str:
    port = free_port()
    cmd = [
        str(Path(sys.executable).parent / "imgcls"),
        "serve",
        "--model",
        str(trained["model"]),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_the_page_in_a_real_browser(server: str, trained: dict, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    playwright = pytest.importorskip("playwright.sync_api")
    if chromium is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    Image.open(io.BytesIO(_image(2, 3))).save(tmp_path / "fox.jpg")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()
        page.goto(server + "/")
        page.wait_for_selector("text=lenet")
        page.set_input_files("#files", str(tmp_path / "fox.jpg"))
        page.wait_for_selector(".card .label", timeout=30_000)
        label = page.inner_text(".card .label")
        bars = page.locator(".card .bar").count()
        page.click(".card .why")  # where the model found its evidence
        page.wait_for_selector(".card .overlays figure img", timeout=30_000)
        overlays = page.locator(".card .overlays figure").count()
        first_caption = page.inner_text(".card .overlays figcaption")
        page.screenshot(path=str(tmp_path / "page.png"))
        page.click(".card .why")
        hidden = page.locator(".card .overlays").is_hidden()
        # the API documentation renders from the installed Swagger UI bundle, with no internet
        page.goto(server + "/docs")
        page.wait_for_selector("text=/predict", timeout=30_000)
        browser.close()
    expected = Classifier.load(trained["model"]).predict(str(tmp_path / "fox.jpg"))[0]["label"]
    assert label == expected and bars == 3
    assert overlays == 3 and first_caption.startswith(expected) and hidden
    assert (tmp_path / "page.png").stat().st_size > 0


def test_the_running_servers_api_against_its_own_schema(server: str) -> None:
    """schemathesis generates requests from /openapi.json (valid and invalid uploads, query
    values, headers) and checks every answer: never a 5xx, and status, content type and body as
    the schema declares. Bounded: 75 valid and 75 invalid requests to each operation, loopback only. (The load test
    is benchmarks/serve_load.py.)"""
    from hypothesis import HealthCheck, settings
    from schemathesis import GenerationMode, openapi
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = openapi.from_url(f"{server}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    calls = []

    for operation in schema.get_all_operations():
        op = operation.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode == GenerationMode.NEGATIVE and op.method.upper() == "GET":
                continue  # nothing to get wrong in a GET without parameters

            @settings(max_examples=75, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(case=op.as_strategy(generation_mode=mode))
            def check(case: object) -> None:
                response = case.call_and_validate(checks=checks, timeout=30)  # type: ignore[attr-defined]
                calls.append((case.path, response.status_code))  # type: ignore[attr-defined]

            check()
    assert {"/predict", "/model", "/health"} <= {p for p, _ in calls}
    statuses = {code for p, code in calls if p == "/predict"}
    assert {200, 415, 422} <= statuses or {415, 422} <= statuses, statuses  # good and bad requests were sent


def test_decodes_are_capped_not_requests(trained: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode limit held a slot per request, whose files then all decoded at once: up to
    cores x files 60-MP decodes in flight. Now at most one decode per core, whatever the requests."""
    import threading

    import httpx

    from imgcls.serve.app import Service

    monkeypatch.setattr("imgcls.runtime.physical_cores", lambda: 2)
    lock, running, most = threading.Lock(), [0], [0]
    decode = Service.decode

    def counted(self: Service, name: str, data: bytes) -> object:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        try:
            return decode(self, name, data)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(Service, "decode", counted)
    cfg = ServeConfig(model=str(trained["model"]), max_files=8)
    app = create_app(cfg, Classifier.load(trained["model"]))
    files = [("file", (f"{i}.jpg", _image(i % 3, i), "image/jpeg")) for i in range(8)]

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
            replies = await asyncio.gather(*(c.post("/predict", files=files) for _ in range(4)))
        return [r.status_code for r in replies]

    assert asyncio.run(main()) == [200] * 4
    assert most[0] == 2


def test_one_json_error_handler_for_serve_and_review() -> None:
    """serve and review each had their own handler for the {"error": "one line"} answers (and
    worded a malformed request's field differently): one function in serve.http, used by both."""
    from fastapi import FastAPI, Query

    import imgcls.review.app as review_app
    from imgcls.errors import UserError
    from imgcls.serve.http import HTTPProblem, one_line_errors

    assert review_app.one_line_errors is one_line_errors and not hasattr(review_app, "_one_line_errors")
    app = FastAPI()
    one_line_errors(app, {HTTPProblem: lambda e: (e.status, e.message), UserError: lambda e: (400, str(e))})

    @app.get("/x")
    def x(n: int = Query(..., ge=1)) -> dict:
        if n == 2:
            raise HTTPProblem(409, "two is taken")
        if n == 3:
            raise UserError("three is refused")
        return {"n": n}

    c = TestClient(app)
    assert c.get("/x?n=1").json() == {"n": 1}
    assert (c.get("/x?n=0").status_code, c.get("/x?n=0").json()["error"]) == (
        422, "n: Input should be greater than or equal to 1",
    )  # fmt: skip
    assert c.get("/x").json() == {"error": "n: Field required"}
    assert (c.get("/x?n=2").status_code, c.get("/x?n=2").json()) == (409, {"error": "two is taken"})
    assert (c.get("/x?n=3").status_code, c.get("/x?n=3").json()) == (400, {"error": "three is refused"})


def test_the_page_lists_results_in_upload_order(server: str, tmp_path: Path) -> None:
    """The page put each new card first: three images chosen together were listed last to first."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    playwright = pytest.importorskip("playwright.sync_api")
    if chromium is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    names = ["first.jpg", "second.jpg", "third.jpg"]
    for k, name in enumerate(names):
        Image.open(io.BytesIO(_image(k, k))).save(tmp_path / name)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = browser.new_page()
        page.goto(server + "/")
        page.wait_for_selector("text=lenet")
        page.set_input_files("#files", [str(tmp_path / n) for n in names])
        page.wait_for_function("document.querySelectorAll('.card .label').length === 3", timeout=30_000)
        page.set_input_files("#files", str(tmp_path / "first.jpg"))  # a later upload comes after them
        page.wait_for_function("document.querySelectorAll('.card .label').length === 4", timeout=30_000)
        shown = page.locator(".card .name").all_inner_texts()
        browser.close()
    assert shown == [*names, "first.jpg"]


def test_bound_to_every_interface_a_rebinding_page_is_refused(tmp_path: Path) -> None:
    """Bound to 0.0.0.0 or ::, a rebinding page's requests carry ``Host: evil.example:8765`` and an
    ``Origin`` equal to it; the Host check let every name through there, so the page read the queue
    and rewrote corrections.csv (review, and serve without a key). Now only this machine's own
    names (its host name, fully qualified name, loopback), any IP address (a page cannot make a
    browser send an address as its name: no rebinding) and the ``--allowed-host`` names pass."""
    import socket as sockets

    from imgcls.review.app import create_review_app
    from imgcls.review.queue import Item
    from imgcls.review.session import Session
    from imgcls.serve.http import host_names

    for bind in ("0.0.0.0", "::"):
        s = Session([Item(path="/x/a.jpg", kind="label", label="cat", why="")], tmp_path / f"c{len(bind)}.csv",
                    classes=["cat", "dog"])  # fmt: skip
        app = create_review_app(s, host=bind, port=8765, allowed=["Review.Example:443"])
        with TestClient(app, base_url="http://evil.example:8765") as evil:
            assert evil.get("/api/state").status_code == 403
            r = evil.post("/api/decide", json={"index": 0, "action": "reject"},
                          headers={"Origin": "http://evil.example:8765"})  # fmt: skip
            assert r.status_code == 403 and "--allowed-host evil.example" in r.json()["error"], r.text
            assert not s.out.exists()
        own = (sockets.gethostname(), "localhost:9000", "127.0.0.1", "[::1]:8765", "192.168.1.7:8765", "[fe80::1]",
               "review.example")  # fmt: skip
        with TestClient(app, base_url="http://127.0.0.1:8765") as c:
            for host in own:
                assert c.get("/api/state", headers={"Host": host}).status_code == 200, host
            r = c.post("/api/decide", json={"index": 0, "action": "reject"},
                       headers={"Host": "review.example", "Origin": "http://review.example"})  # fmt: skip
            assert r.status_code == 200 and s.out.read_text().strip().endswith("/x/a.jpg,cat,reject")
    assert "evil.example" not in host_names("0.0.0.0") and sockets.gethostname().lower() in host_names("::")
