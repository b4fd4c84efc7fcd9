"""Bounded load test of ``imgcls serve`` on this machine (127.0.0.1 only).

Sends ``--requests`` requests from ``--clients`` concurrent clients, cycling through ten kinds:
four real JPEG uploads (one or two images per request) and six bad ones (not an image,
truncated, a decompression bomb, an empty file, a request that is not multipart, too many
files). One good request first warms the server up (its latency is printed apart). Reports
requests/s, latency percentiles, responses by status class and the server's resident memory as the
load goes on (when it started the server, or with --pid); exits 1 if any response is a 5xx
or a connection failed.

    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --requests 400 --clients 8
    python benchmarks/serve_load.py --model runs/a/model            # starts its own server
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import statistics
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def _jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(rng.normal(128, 60, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def request_kinds() -> list[tuple[str, dict]]:
    good = [_jpeg(i) for i in range(4)]
    return [
        ("one image", {"files": [("file", ("a.jpg", good[0], "image/jpeg"))]}),
        (
            "two images",
            {
                "files": [
                    ("file", ("a.jpg", good[1], "image/jpeg")),
                    ("file", ("b.jpg", good[2], "image/jpeg")),
                ]
            },
        ),
        ("one image", {"files": [("file", ("c.jpg", good[3], "image/jpeg"))]}),
        ("one image", {"files": [("file", ("d.jpg", good[0], "image/jpeg"))]}),
        (
            "not an image",
            {"files": [("file", ("x.jpg", b"plain text, no pixels" * 50, "image/jpeg"))]},
        ),
        ("truncated", {"files": [("file", ("t.jpg", good[1][: len(good[1]) // 3], "image/jpeg"))]}),
        ("bomb", {"files": [("file", ("bomb.png", _bomb(), "image/png"))]}),
        ("empty", {"files": [("file", ("e.jpg", b"", "image/jpeg"))]}),
        ("not multipart", {"content": good[0], "headers": {"content-type": "image/jpeg"}}),
        (
            "too many files",
            {"files": [("file", (f"{i}.jpg", good[0], "image/jpeg")) for i in range(40)]},
        ),
    ]


def rss_mib(pid: int | None) -> float | None:
    """The resident memory of a process on this machine (Linux), in MiB."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None
    return kb / 1024


async def run(url: str, total: int, clients: int, pid: int | None = None) -> dict:
    kinds = request_kinds()
    memory: list[tuple[str, float | None]] = []
    marks = {total * q // 4: f"{25 * q}%" for q in (1, 2, 3, 4)}
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    counter = iter(range(total))

    async def client(c: httpx.AsyncClient) -> None:
        for i in counter:
            name, kw = kinds[i % len(kinds)]
            t = time.perf_counter()
            try:
                r = await c.post(f"{url}/predict", **kw)
                statuses[f"{r.status_code // 100}xx"] += 1
                if r.status_code >= 500:
                    failures.append(f"{name}: {r.status_code} {r.text[:200]}")
            except httpx.HTTPError as e:
                statuses["failed"] += 1
                failures.append(f"{name}: {type(e).__name__} {e}")
            latencies.append(time.perf_counter() - t)
            if len(latencies) in marks:
                memory.append((marks[len(latencies)], rss_mib(pid)))

    async with httpx.AsyncClient(timeout=120) as c:
        t = time.perf_counter()
        first = await c.post(f"{url}/predict", **kinds[0][1])  # warm-up: the first forward pass
        warmup = time.perf_counter() - t
        memory.append(("after warm-up", rss_mib(pid)))
        if first.status_code != 200:
            failures.append(f"warm-up: {first.status_code} {first.text[:200]}")
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "latencies": latencies,
        "statuses": statuses,
        "failures": failures,
        "warmup": warmup,
        "memory": memory,
    }


def start_server(model: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    imgcls = Path(sys.executable).parent / "imgcls"
    proc = subprocess.Popen([str(imgcls), "serve", "--model", model, "--port", str(port)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server on this machine")
    ap.add_argument("--model", help="start 'imgcls serve' on this model instead")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--pid", type=int, help="with --url: the server's process id, to follow its memory")
    args = ap.parse_args()
    if not args.url and not args.model:
        ap.error("give --url or --model")
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args.model)
    host = httpx.URL(url).host
    if host not in ("127.0.0.1", "localhost", "::1"):
        ap.error("load tests only run against this machine (127.0.0.1)")
    try:
        res = asyncio.run(run(url, args.requests, args.clients, proc.pid if proc is not None else args.pid))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    lat = sorted(res["latencies"])
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else lat * 99
    st = res["statuses"]
    print(
        f"{len(lat)} requests from {args.clients} clients in {res['seconds']:.1f}s: "
        f"{len(lat) / res['seconds']:.1f} requests/s"
    )
    print(
        f"latency ms: p50 {1000 * q[49]:.0f}  p95 {1000 * q[94]:.0f}  p99 {1000 * q[98]:.0f}  max {1000 * lat[-1]:.0f}"
    )
    print(f"2xx: {st['2xx']}  4xx: {st['4xx']}  5xx: {st['5xx']}  failed: {st['failed']}")
    print(f"warm-up request before the load: {1000 * res['warmup']:.0f} ms")
    if any(m is not None for _, m in res["memory"]):
        print("server RSS MiB: " + ", ".join(f"{k} {m:.0f}" for k, m in res["memory"] if m is not None))
    for f in res["failures"][:10]:
        print("  " + f)
    return 1 if st["5xx"] or st["failed"] or res["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
