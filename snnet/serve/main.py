"""serve.py: an HTTP inference server for a trained SN-Net or a frontier file.

    python serve.py --resume CKPT                              # the sweep's most accurate network
    python serve.py --resume CKPT --slo-ms 50 --max-batch-size 16 --max-wait-ms 5
    python serve.py --exported frontier.pt --port 8080

Requests are batched per network (:mod:`snnet.serve.batching`); with ``--slo-ms`` the
controller of :mod:`snnet.serve.controller` moves along the sweep's FLOPs frontier to hold the
p99 latency. The images get predict.py's preprocessing and the answers are predict.py's top-k.
SIGTERM (or Ctrl-C) stops accepting connections, answers the requests in flight, exits 0.
"""

from __future__ import annotations

import signal
import socket
import time
from typing import Any, Optional, Sequence

import torch

from ..errors import ConfigError, exit_on_user_error
from ..run_config import ServeConfig, defaults_of, from_namespace


def parse_serve_config(argv: Optional[Sequence[str]] = None) -> Any:
    """serve.py's command line (and ``-c`` config) as a checked, frozen :class:`ServeConfig`."""
    from ..cli import build_serve_parser
    from ..config import parse_args_with_config
    from ..evaluate.load import train_keys

    parser = build_serve_parser()
    args, _ = parse_args_with_config(parser, argv, extra_known_keys=train_keys())
    if bool(args.checkpoint) == bool(args.exported):
        raise ConfigError("pass either --resume CKPT (a trained SN-Net with its eval.py sweep) or --exported FILE")
    for flag, value in (
        ("--max-batch-size", args.max_batch_size),
        ("--top-k", args.top_k),
        ("--max-images", args.max_images),
        ("--max-image-bytes", args.max_image_bytes),
        ("--max-image-pixels", args.max_image_pixels),
    ):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if args.max_wait_ms < 0 or args.add_latency_ms < 0:
        raise ConfigError("--max-wait-ms and --add-latency-ms must be >= 0")
    if args.slo_ms is not None and not args.slo_ms > 0:
        raise ConfigError(f"--slo-ms must be a positive number of milliseconds, got {args.slo_ms}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a port: use 0..65535 (0: a free one)")
    return from_namespace(ServeConfig, args, defaults=defaults_of(parser))


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: one the system picks)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(2048)
    except OSError as e:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --port (0: a free one)"
        ) from None
    return sock


def _costs(source) -> list[float]:
    """The controller's relative cost of each frontier network: the sweep's latency when measured, else FLOPs."""
    key = "latency_ms" if source.has_latency() else "flops"
    return [float(r[key]) for r in source.frontier]


def _log(line: str) -> None:
    print(line, flush=True)


def build_state(cfg: Any, source, log=_log):
    """The batcher, controller and metrics of ``cfg`` over ``source``; each frontier network
    runs once first (warm-up, and the controller's first time per image)."""
    from ..data.loaders import Normalize
    from ..evaluate.predict import _transform, top_classes
    from .app import ServerState
    from .batching import Batcher
    from .controller import ControllerSettings, LatencyController
    from .inputs import Limits
    from .metrics import ServeMetrics

    info = source.info
    prep = Normalize(info["mean"], info["std"], torch.device(cfg.device))
    names = info["class_names"]
    flops = {r["cfg_id"]: r["flops"] for r in source.rows}
    largest = max(flops.values())

    def run(cfg_id: int, images: torch.Tensor) -> list:
        answers = []
        for chunk in images.split(cfg.max_batch_size):
            x, _ = prep(chunk, torch.zeros(len(chunk)))
            answers += top_classes(source.forward(cfg_id, x), names, cfg.top_k)
        if cfg.add_latency_ms:  # testing: a heavier model, in proportion to the network's FLOPs
            time.sleep(cfg.add_latency_ms / 1000 * flops[cfg_id] / largest * len(images))
        return answers

    metrics = ServeMetrics()
    controller = None
    frontier = [r["cfg_id"] for r in source.frontier]
    if cfg.slo_ms is not None:
        if source.default_cfg_id not in frontier:
            frontier.append(source.default_cfg_id)
        settings = ControllerSettings(slo_ms=cfg.slo_ms, max_wait_ms=cfg.max_wait_ms)

        def log_switch(line: str) -> None:
            log(line)
            metrics.switches.inc()

        controller = LatencyController(frontier, _costs(source), source.default_cfg_id, settings, log_switch)
    sample = torch.zeros(1, *info["input_size"], dtype=torch.uint8)
    for cfg_id in frontier:
        with torch.inference_mode():
            for _ in range(3):
                start = time.perf_counter()
                run(cfg_id, sample)
        if controller:
            controller.served(cfg_id, 1, time.perf_counter() - start)

    def on_batch(cfg_id: int, images: int, seconds: float) -> None:
        metrics.batch_images.observe(images)
        if controller:
            controller.served(cfg_id, images, seconds)

    choose = controller.choose if controller else (lambda queue: source.default_cfg_id)
    rank = {r["cfg_id"]: i for i, r in enumerate(sorted(source.rows, key=lambda r: (r["flops"], r["cfg_id"])))}
    batcher = Batcher(run, choose, source.default_cfg_id, rank, cfg.max_batch_size, cfg.max_wait_ms, on_batch)
    limits = Limits(cfg.max_images, cfg.max_image_bytes, cfg.max_image_pixels)
    return ServerState(source, batcher, controller, metrics, limits, _transform(info), cfg.slo_ms)


@exit_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    import uvicorn

    from ..distributed import set_cpu_threads
    from .app import build_app
    from .sources import load_source

    cfg = parse_serve_config(argv)
    serving = False

    def stop(sig, frame) -> None:
        # before serving: stop at once; while serving uvicorn has its own handlers, and after it
        # has answered the requests in flight it raises the signal again, to be ignored here
        if not serving:
            raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    set_cpu_threads(cfg.threads)
    sock = listen(cfg.host, cfg.port)  # before loading: a taken port fails at once
    source = load_source(cfg)
    state = build_state(cfg, source)
    app = build_app(state)
    host, port = sock.getsockname()[:2]
    front = ", ".join(f"{r['cfg_id']}" for r in source.frontier)
    print(
        f"Serving {source.description}: frontier cfg_ids [{front}], default {source.default_cfg_id}"
        + (f", --slo-ms {cfg.slo_ms:g}" if cfg.slo_ms else ", fixed network")
        + f"; batches of <= {cfg.max_batch_size} images, <= {cfg.max_wait_ms:g} ms wait",
        flush=True,
    )
    print(f"Listening on http://{host}:{port}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    serving = True  # uvicorn: stop accepting on SIGTERM/SIGINT, answer the requests in flight
    server.run(sockets=[sock])
    print("Stopped: every request in flight answered", flush=True)
    return 0
