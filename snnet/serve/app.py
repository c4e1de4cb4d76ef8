"""The HTTP application of serve.py (FastAPI): ``POST /predict``, ``GET /networks``,
``GET /metrics``, ``GET /healthz``.

Request handlers run on the event loop and never touch the model: they read and check the
body, decode the images (in a thread of the pool), queue them for the :class:`Batcher` and await
the answer. Every refusal is a 4xx ``{"error": "one message"}``; the server goes on serving.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batching import Batcher, Job
from .controller import LatencyController
from .inputs import (
    Budget,
    Limits,
    RequestError,
    check_count,
    decode_image,
    json_images,
    parse_budget,
    pick_budget_network,
)
from .metrics import ServeMetrics
from .sources import ModelSource, network_entry


@dataclass
class ServerState:
    """What the handlers share: the source, the queue, the controller (None: fixed network)."""

    source: ModelSource
    batcher: Batcher
    controller: Optional[LatencyController]
    metrics: ServeMetrics
    limits: Limits
    transform: Any
    slo_ms: Optional[float]

    @property
    def current(self) -> int:
        return self.controller.current if self.controller else self.source.default_cfg_id


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request has {declared} bytes: at most {limit} (--max-images x --max-image-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request has over {limit} bytes (--max-images x --max-image-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def multipart_images(request: Request, body: bytes, limits: Limits) -> tuple[list, dict]:
    """The ``images`` files and other fields of a multipart body (parsed by starlette)."""

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, receive).form(max_files=limits.max_images + 1, max_fields=16)
    files = form.getlist("images")
    if any(isinstance(f, str) for f in files):
        raise RequestError(400, "multipart field 'images' must hold files (curl -F images=@photo.jpg)")
    check_count(len(files), limits)
    images = [(f.filename or str(i), await f.read()) for i, f in enumerate(files)]
    return images, {k: form.get(k) for k in ("budget_ms", "budget_flops")}


async def parse_request(request: Request, state: ServerState) -> tuple[list[str], torch.Tensor, Budget]:
    """(image names, the uint8 batch, the budget) of a ``POST /predict``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("multipart/form-data", "application/json"):
        raise RequestError(
            415,
            f"content type '{kind or 'none'}': send multipart/form-data files 'images' or application/json "
            '{"images": [BASE64, ...]}',
        )
    body = await read_body(request, state.limits.max_body_bytes)
    if kind == "application/json":
        images, fields = json_images(body)
    else:
        images, fields = await multipart_images(request, body, state.limits)
    check_count(len(images), state.limits)
    budget = parse_budget(fields.get("budget_ms"), fields.get("budget_flops"))

    def decode() -> torch.Tensor:
        return torch.stack([decode_image(n, d, state.transform, state.limits) for n, d in images])

    return [n for n, _ in images], await run_in_threadpool(decode), budget


async def predict(request: Request, state: ServerState) -> JSONResponse:
    import asyncio

    start = time.monotonic()
    names, batch, budget = await parse_request(request, state)
    cfg_id = pick_budget_network(state.source.rows, budget, state.source.has_latency()) if budget.given else None
    loop = asyncio.get_running_loop()
    job = Job(batch, cfg_id, loop.create_future(), loop, arrived=start)
    if state.controller:
        state.controller.arrived(len(batch))
    state.batcher.submit(job)
    state.metrics.queue.set(state.batcher.queued_images)
    answers = await job.future
    seconds = time.monotonic() - start
    if state.controller:
        state.controller.completed(seconds)
    row = state.source.row(job.cfg_id)
    labels = {"cfg_id": str(job.cfg_id), "name": row["name"]}
    state.metrics.network_requests.labels(**labels).inc()
    state.metrics.network_images.labels(**labels).inc(len(batch))
    state.metrics.latency.observe(seconds)
    predictions = [{"image": n, **a} for n, a in zip(names, answers)]
    return JSONResponse({"cfg_id": job.cfg_id, "name": row["name"], "predictions": predictions})


def build_app(state: ServerState) -> FastAPI:
    """The FastAPI application over ``state``; its lifespan starts and drains the batcher."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher.start()
        yield
        await run_in_threadpool(state.batcher.stop)  # uvicorn has let the requests in flight finish

    app = FastAPI(title="snnet serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    metrics = state.metrics

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError):
        metrics.errors.labels(status=str(e.status)).inc()
        metrics.requests.labels(status=str(e.status)).inc()
        return error(e.status, e.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return error(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return error(400, "; ".join(str(x.get("msg", x)) for x in e.errors()) or "invalid request")

    @app.post("/predict")
    async def predict_route(request: Request):
        metrics.in_flight.inc()
        try:
            response = await predict(request, state)
        finally:
            metrics.in_flight.dec()
        metrics.requests.labels(status="200").inc()
        return response

    @app.get("/networks")
    async def networks():
        return {
            "networks": [network_entry(state.source, r["cfg_id"]) for r in state.source.frontier],
            "default_cfg_id": state.source.default_cfg_id,
            "current_cfg_id": state.current,
            "slo_ms": state.slo_ms,
        }

    @app.get("/metrics")
    async def prometheus():
        metrics.queue.set(state.batcher.queued_images)
        metrics.current.set(state.current)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "current_cfg_id": state.current, "queued_images": state.batcher.queued_images}

    return app
