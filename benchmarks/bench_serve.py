"""serve.py under load: the server fixed on the most accurate network vs the adaptive one
(``--slo-ms``), at 0.5x, 1x, 2x and 4x the throughput the fixed server sustains on this machine.

    python benchmarks/bench_serve.py                          # builds a digits SN-Net in output/bench_serve
    python benchmarks/bench_serve.py --resume CKPT --results DIR --slo-ms 200

Without ``--resume`` it trains a DeiT-shaped digits SN-Net (embed dims ``--dims``, depth
``--depth``, 32 px, patch 4: 65 tokens, so a forward costs milliseconds, not microseconds) for a
few steps and sweeps it with eval.py, once (kept in ``--work``). Then, for each server in turn
(``serve.py`` as a subprocess on 127.0.0.1, ``--threads`` torch threads):

1. calibration (fixed server): the unloaded latency (sequential requests) and the throughput
   it sustains (a closed loop of ``2 x --max-batch-size`` clients): the 1x load;
2. per load: an open loop of Poisson arrivals at load x that throughput, ``--seconds`` worth of
   requests (a fixed count), every request one digits PNG as JSON base64 on its own connection,
   waited for at most ``--time-limit`` seconds; the server's queue drains before the next load.

Reported per load: p50/p99 of the latency the client sees, the throughput (answers / time from
the first request to the last answer), the share of requests per network (the answers'
cfg_id) and the mean top-1 of the networks that served them (the sweep's stitches.csv). The
target ``--slo-ms`` defaults to 4x the fixed server's unloaded p50.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------------------------------------
# the SN-Net to serve
# ---------------------------------------------------------------------------------------------
def build(work: Path, dims: list[int], depth: int, steps: int) -> tuple[Path, Path]:
    """A briefly trained digits SN-Net and its eval.py sweep in ``work`` (reused when there)."""
    from snnet.evaluate.main import main as eval_main
    from snnet.train.main import main as train_main

    ckpt, sweep = work / "run" / "last.pth.tar", work / "sweep"
    model = [
        "--dataset", "digits", "--workers", "0", "--img-size", "32",
        "--anchors", "deit_tiny_patch16_224", "deit_small_patch16_224",
        "--model-kwargs", "patch_size=4", f"depth={depth}",
        "--anchor-kwargs", f"embed_dim={dims[0]} num_heads=2", f"embed_dim={dims[1]} num_heads=4",
    ]  # fmt: skip
    if not ckpt.is_file():
        train = ["--no-aug", "--smoothing", "0", "--reprob", "0", "--warmup-epochs", "0", "--opt", "adamw"]
        train += ["--lr", "1e-3", "-b", "32", "--epochs", "1", "--max-steps-per-epoch", str(steps), "--ls-init"]
        train += ["--max-val-batches", "1", "--output", str(work), "--experiment", "run"]
        assert train_main(model + train) == 0
    if not (sweep / "stitches.csv").is_file():
        assert eval_main(["--resume", str(ckpt), "--dataset", "digits", "--workers", "0", "--output", str(sweep)]) == 0
    return ckpt, sweep


def sample_png() -> bytes:
    import io

    from snnet.data.datasets import load_digits_split

    image, _ = next(iter(load_digits_split("validation")))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# the server and the load
# ---------------------------------------------------------------------------------------------
class Server:
    """``serve.py`` as a subprocess on a free port of 127.0.0.1."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        self.handle = open(log, "w")
        cmd = [sys.executable, str(REPO / "serve.py"), *args, "--port", "0"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not (m := re.search(r"Listening on http://127.0.0.1:(\d+)", log.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"serve.py did not start:\n{log.read_text()}")
            time.sleep(0.2)
        self.port = int(m.group(1))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)
        self.handle.close()


def http_request(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def send(port: int, request: bytes) -> tuple[int, dict]:
    """One request on its own connection: (status, JSON answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def timed(port: int, request: bytes) -> tuple[float, int, object]:
    start = time.perf_counter()
    status, answer = await send(port, request)
    return time.perf_counter() - start, status, answer.get("cfg_id")


async def open_loop(port: int, request: bytes, rate: float, count: int, limit: float, seed: int) -> dict:
    """``count`` requests at Poisson arrivals of ``rate`` per second, answers awaited for ``limit`` s."""
    rng = random.Random(seed)
    tasks, start = [], time.perf_counter()
    due = start
    for _ in range(count):
        due += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.ensure_future(timed(port, request)))
    done, pending = await asyncio.wait(tasks, timeout=max(0.0, start + limit - time.perf_counter()))
    for t in pending:
        t.cancel()
    results = [t.result() for t in done if not t.exception()]
    return {"results": results, "unanswered": count - len(results), "seconds": time.perf_counter() - start}


async def closed_loop(port: int, request: bytes, clients: int, seconds: float) -> float:
    """Answers per second of ``clients`` clients that each send the next request on an answer."""
    stop, answered = time.perf_counter() + seconds, [0]

    async def client() -> None:
        while time.perf_counter() < stop:
            await send(port, request)
            answered[0] += 1

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return answered[0] / (time.perf_counter() - start)


async def drain(port: int, top: int, timeout: float = 60) -> None:
    """Wait until the server's queue is empty and it serves its top network again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, health = await send(port, http_request("GET", "/healthz"))
        if health["queued_images"] == 0 and health["current_cfg_id"] == top:
            return
        await asyncio.sleep(0.5)


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def summarise(run: dict, top1: dict[int, float]) -> dict:
    latencies = sorted(1000 * s for s, status, _ in run["results"] if status == 200)
    nets = collections.Counter(c for _, status, c in run["results"] if status == 200)
    n = max(1, sum(nets.values()))
    return {
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
        "throughput": len(latencies) / run["seconds"],
        "shares": {c: k / n for c, k in sorted(nets.items(), key=lambda kv: -top1[kv[0]])},
        "top1": sum(top1[c] * k for c, k in nets.items()) / n,
        "failed": run["unanswered"] + sum(status != 200 for _, status, _ in run["results"]),
    }


def serve_loads(server: Server, args, request: bytes, capacity: float, top: int, top1: dict) -> list[dict]:
    rows = []
    for i, load in enumerate(args.loads):
        rate = load * capacity
        count = max(20, round(rate * args.seconds))
        asyncio.run(drain(server.port, top))
        run = asyncio.run(open_loop(server.port, request, rate, count, args.time_limit, seed=i))
        row = {"load": load, "rate": rate, "count": count, **summarise(run, top1)}
        print(
            f"  {load:g}x ({rate:.1f} req/s, {count} requests): p50 {row['p50']:.1f} ms, p99 {row['p99']:.1f} ms",
            flush=True,
        )
        rows.append(row)
    return rows


def table(results: dict[str, list[dict]], slo: float) -> str:
    lines = [
        "| server | load | rate (req/s) | p50 (ms) | p99 (ms) | p99 <= slo | throughput (req/s) | mean top-1 | requests per network (cfg_id: share) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for name, rows in results.items():
        for r in rows:
            shares = ", ".join(f"{c}: {100 * s:.0f}%" for c, s in r["shares"].items())
            failed = f" ({r['failed']} unanswered)" if r["failed"] else ""
            lines.append(
                f"| {name} | {r['load']:g}x | {r['rate']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                f"{'yes' if r['p99'] <= slo else '**no**'} | {r['throughput']:.1f}{failed} | {r['top1']:.2f} | {shares} |"
            )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resume", default="", metavar="CKPT", help="serve this SN-Net (default: build one)")
    p.add_argument("--results", default="", metavar="DIR", help="its eval.py sweep")
    p.add_argument("--work", default="output/bench_serve", metavar="DIR", help="where the built SN-Net is kept")
    p.add_argument("--dims", type=int, nargs=2, default=[96, 384], help="embed dims of the built anchors")
    p.add_argument("--depth", type=int, default=6, help="blocks per built anchor")
    p.add_argument("--train-steps", type=int, default=30, help="training steps of the built SN-Net")
    p.add_argument("--slo-ms", type=float, default=None, help="p99 target (default: 4x the unloaded p50)")
    p.add_argument("--loads", type=float, nargs="+", default=[0.5, 1, 2, 4], help="x the fixed throughput")
    p.add_argument("--seconds", type=float, default=6.0, help="requests per load: this many seconds' worth")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds to wait for a load's answers")
    p.add_argument("--calibrate-seconds", type=float, default=4.0, help="closed loop measuring the 1x throughput")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    return p.parse_args()


def main() -> None:
    from snnet.evaluate.pareto import pareto_frontier
    from snnet.evaluate.results import read_results

    args = parse_args()
    work = Path(args.work)
    ckpt, sweep = (
        (Path(args.resume), Path(args.results)) if args.resume else build(work, args.dims, args.depth, args.train_steps)
    )
    rows = read_results(sweep / "stitches.csv")
    top1 = {r["cfg_id"]: r["top1"] for r in rows}
    top = pareto_frontier(rows)[-1]["cfg_id"]
    request = http_request(
        "POST", "/predict", json.dumps({"images": [base64.b64encode(sample_png()).decode()]}).encode()
    )
    common = ["--resume", str(ckpt), "--results", str(sweep), "--threads", str(args.threads)]
    common += ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]
    work.mkdir(parents=True, exist_ok=True)

    fixed = Server(common, work / "serve-fixed.log")
    asyncio.run(closed_loop(fixed.port, request, 1, 1.0))  # warm-up
    unloaded = statistics.median([asyncio.run(timed(fixed.port, request))[0] * 1000 for _ in range(20)])
    capacity = asyncio.run(closed_loop(fixed.port, request, 2 * args.max_batch_size, args.calibrate_seconds))
    slo = args.slo_ms or round(4 * unloaded, 1)
    print(
        f"fixed server on cfg_id {top}: unloaded p50 {unloaded:.1f} ms, sustains {capacity:.1f} req/s; slo {slo:g} ms",
        flush=True,
    )
    results = {"fixed": serve_loads(fixed, args, request, capacity, top, top1)}
    fixed.stop()
    adaptive = Server(common + ["--slo-ms", str(slo)], work / "serve-adaptive.log")
    asyncio.run(closed_loop(adaptive.port, request, 1, 1.0))
    print(f"adaptive server (--slo-ms {slo:g}):", flush=True)
    results["adaptive"] = serve_loads(adaptive, args, request, capacity, top, top1)
    adaptive.stop()
    switches = sum(line.startswith("slo: switch") for line in (work / "serve-adaptive.log").read_text().splitlines())
    print(f"\nSN-Net: {ckpt} ({len(rows)} networks, frontier top cfg_id {top}, top-1 {top1[top]:.2f})")
    print(
        f"1x = {capacity:.1f} req/s (the fixed server's closed-loop throughput); unloaded p50 {unloaded:.1f} ms; slo {slo:g} ms"
    )
    print(f"adaptive server: {switches} network switches (log: {work / 'serve-adaptive.log'})\n")
    print(table(results, slo))


if __name__ == "__main__":
    main()
