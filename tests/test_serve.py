"""serve.py over real HTTP on 127.0.0.1: a briefly trained digits SN-Net served as a subprocess
answers as predict.py does, picks budget networks as eval.py does, refuses bad requests with a
4xx JSON and goes on serving, moves to cheaper networks under a burst and back up after it, and
answers the requests in flight when it gets SIGTERM."""

from __future__ import annotations

import base64
import csv
import http.client
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import pytest
import torch
from conftest import run_entry
from test_predict import trained  # noqa: F401  (the trained SN-Net, its sweep and the PNGs)

from snnet.evaluate.main import main as eval_main
from snnet.evaluate.predict import main as predict_main
from snnet.evaluate.predict import predict
from snnet.evaluate.results import read_results
from snnet.serve.main import main as serve_main

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # trains, starts servers


# ---------------------------------------------------------------------------------------------
# a server subprocess and a small client
# ---------------------------------------------------------------------------------------------
class Server:
    """``serve.py ARGS --port 0`` as a subprocess; its log goes to a file (a pipe could fill)."""

    def __init__(self, args: list, log: Path):
        self.log = log
        self.handle = open(log, "w")
        cmd = [sys.executable, str(REPO / "serve.py"), *map(str, args), "--port", "0", "--threads", "1"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while not (m := re.search(r"Listening on http://127.0.0.1:(\d+)", log.read_text())):
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        self.port = int(m.group(1))

    def request(self, method: str, path: str, body: bytes = b"", headers: Optional[dict] = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body, headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def predict(self, images: list[bytes], **fields) -> tuple[int, dict]:
        payload = {"images": [base64.b64encode(b).decode() for b in images], **fields}
        status, body = self.request("POST", "/predict", json.dumps(payload).encode(), JSON)
        return status, json.loads(body)

    def get(self, path: str) -> dict:
        status, body = self.request("GET", path)
        assert status == 200, body
        return json.loads(body)

    def metric(self, name: str) -> float:
        """The sum of a metric's samples in ``GET /metrics``."""
        status, body = self.request("GET", "/metrics")
        assert status == 200
        pattern = rf"^{name}(?:{{[^}}]*}})? (\S+)$"
        return sum(float(v) for v in re.findall(pattern, body.decode(), re.MULTILINE))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.handle.close()
        return code


JSON = {"Content-Type": "application/json"}


def multipart(files: list[tuple[str, bytes]], fields: dict) -> tuple[bytes, dict]:
    """A multipart/form-data body of ``images`` files and plain fields."""
    boundary = "snnet-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    for name, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
        parts.append(head.encode() + b"Content-Type: image/png\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"
    }


def png(width: int, height: int, noise: bool = False) -> bytes:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8) if noise else None
    image = Image.fromarray(pixels.numpy()) if noise else Image.new("RGB", (width, height), (200, 30, 30))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def swept(trained, tmp_path_factory):  # noqa: F811
    """The trained SN-Net's sweep with latencies (budget_ms needs them) and 20 of its PNGs."""
    ckpt, _, images = trained
    sweep = tmp_path_factory.mktemp("serve") / "sweep"
    args = ["--resume", ckpt, "--dataset", "digits", "--workers", "0", "--output", sweep, "--log-interval", "0"]
    assert run_entry(eval_main, args + ["--measure-latency", "--latency-repeats", "5"]) == 0
    pngs = [f for d in sorted(images.iterdir()) for f in sorted(d.iterdir())[:2]]
    return ckpt, sweep, pngs


@pytest.fixture(scope="module")
def server(swept, tmp_path_factory):
    """The SN-Net served without a latency target, with small limits to refuse against."""
    ckpt, sweep, _ = swept
    limits = ["--max-images", "8", "--max-image-bytes", "60000", "--max-image-pixels", "10000"]
    s = Server(["--resume", ckpt, "--results", sweep, *limits], tmp_path_factory.mktemp("log") / "serve.log")
    yield s
    assert s.stop() == 0


def reference(args: list, tmp_path: Path) -> list[dict]:
    """predict.py's CSV rows for ``args``."""
    out = tmp_path / "predict.csv"
    assert run_entry(predict_main, [*args, "--csv", out]) == 0
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def assert_same_predictions(served: list[dict], expected: list[dict]) -> None:
    assert len(served) == len(expected)
    for s, e in zip(served, expected):
        assert s["image"] == Path(e["image"]).name
        assert s["classes"] == [e[f"class_{k}"] for k in range(1, 6)]
        assert s["indices"] == [int(e[f"index_{k}"]) for k in range(1, 6)]
        assert all(abs(p - float(e[f"prob_{k}"])) < 2e-6 for k, p in enumerate(s["probs"], 1))


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------
def test_predictions_equal_predict_py(server, swept, tmp_path):
    ckpt, sweep, pngs = swept
    rows = read_results(sweep / "stitches.csv")
    budget = sorted(r["flops"] for r in rows)[len(rows) // 2]
    for fields, extra in (({}, []), ({"budget_flops": str(budget)}, ["--budget-flops", str(budget)])):
        expected = reference(["--resume", ckpt, "--stitch", "best", "--results", sweep, *extra, *pngs], tmp_path)
        body, headers = multipart([(f.name, f.read_bytes()) for f in pngs[:8]], fields)  # the curl -F way
        status, answer = server.request("POST", "/predict", body, headers)
        assert status == 200, answer
        assert_same_predictions(json.loads(answer)["predictions"], expected[:8])
        status, answer = server.predict([f.read_bytes() for f in pngs[8:16]], **fields)  # the JSON way
        assert status == 200, answer
        served = answer["predictions"]
        assert_same_predictions([{**p, "image": pngs[8 + int(p["image"])].name} for p in served], expected[8:16])
    assert len({r["class_1"] for r in expected}) > 1  # the network does not give one class to every image


def eval_pick(ckpt: Path, sweep: Path, budget: list, capsys) -> int:
    """The cfg_id eval.py prints for ``budget`` (its sweep resumed from ``sweep``)."""
    capsys.readouterr()
    args = ["--resume", ckpt, "--dataset", "digits", "--workers", "0", "--output", sweep, "--log-interval", "0"]
    assert run_entry(eval_main, args + ["--measure-latency", "--latency-repeats", "5", *budget]) == 0
    return int(re.search(r"Best network within .*?: cfg_id (\d+) ", capsys.readouterr().out).group(1))


def test_a_budget_picks_eval_pys_network(server, swept, capsys):
    ckpt, sweep, pngs = swept
    rows = read_results(sweep / "stitches.csv")
    flops = sorted({r["flops"] for r in rows})
    latency = sorted(r["latency_ms"] for r in rows)[len(rows) // 3]
    image = [pngs[0].read_bytes()]
    budgets = [
        ({"budget_flops": str(flops[len(flops) // 3])}, ["--budget-flops", str(flops[len(flops) // 3])]),
        ({"budget_flops": "%.3fM" % (flops[-1] / 1e6)}, ["--budget-flops", "%.3fM" % (flops[-1] / 1e6)]),
        ({"budget_ms": latency}, ["--budget-latency", str(latency)]),
    ]
    picked = []
    for fields, flags in budgets:
        status, answer = server.predict(image, **fields)
        assert status == 200, answer
        assert answer["cfg_id"] == eval_pick(ckpt, sweep, flags, capsys), fields
        picked.append(answer["cfg_id"])
    assert len(set(picked)) > 1  # the budgets are not all the same network
    status, answer = server.predict(image, budget_flops=str(flops[0] - 1))
    cheapest = min(rows, key=lambda r: r["flops"])
    assert status == 422 and f"cheapest network (cfg_id {cheapest['cfg_id']}" in answer["error"], answer


def test_bad_requests_are_4xx_and_the_server_keeps_serving(server, swept):
    _, _, pngs = swept
    good = pngs[0].read_bytes()
    not_json = b'{"images": ["'
    cases = [
        (server.predict([b"plain text, not an image"]), 400, "not an image"),
        (server.predict([good[: len(good) // 2]]), 400, "truncated or damaged"),
        (server.predict([png(200, 200)]), 413, "200x200 pixels: at most 10000"),
        (server.predict([png(150, 150, noise=True)]), 413, "bytes: at most 60000"),
        (server.predict([good] * 9), 413, "9 images in one request: at most 8"),
        (server.predict([]), 400, "no images"),
        (server.predict([good], budget_flops="1K"), 422, "no network fits budget_flops 1.0K"),
        (server.predict([good], budget_ms=0.0001), 422, "no network fits budget_ms"),
        (server.predict([good], budget_ms="soon"), 400, "budget_ms 'soon' is not a positive number"),
    ]
    raw = [
        (server.request("POST", "/predict", not_json, JSON), 400, "not valid JSON"),
        (server.request("POST", "/predict", b"[1, 2]", JSON), 400, 'needs "images"'),
        (
            server.request("POST", "/predict", b'{"images": ["not base64!"]}', JSON),
            400,
            "images[0] is not valid base64",
        ),
        (server.request("POST", "/predict", good, {"Content-Type": "image/png"}), 415, "content type 'image/png'"),
        (server.request("POST", "/predict", *multipart([], {"images": "x"})), 400, "must hold files"),
    ]
    cases += [((status, json.loads(body)), code, words) for (status, body), code, words in raw]
    for (status, answer), code, words in cases:
        assert status == code and set(answer) == {"error"} and words in answer["error"], (code, answer)
    assert server.proc.poll() is None
    assert server.metric("snnet_serve_errors_total") >= len(cases)
    status, answer = server.predict([good])
    assert status == 200 and len(answer["predictions"]) == 1
    assert server.get("/healthz")["status"] == "ok"


def test_networks_and_metrics_endpoints(server, swept):
    _, sweep, _ = swept
    frontier = read_results(sweep / "pareto.csv")
    listed = server.get("/networks")
    assert [n["cfg_id"] for n in listed["networks"]] == [r["cfg_id"] for r in frontier]
    assert [n["top1"] for n in listed["networks"]] == [r["top1"] for r in frontier]
    assert listed["default_cfg_id"] == max(frontier, key=lambda r: r["top1"])["cfg_id"]
    before = server.metric("snnet_serve_request_latency_seconds_count")
    assert server.predict([b"junk"])[0] == 400
    for _ in range(3):
        assert server.predict([swept[2][0].read_bytes()])[0] == 200
    assert server.metric("snnet_serve_request_latency_seconds_count") == before + 3
    status, body = server.request("GET", "/metrics")
    for name in (
        "snnet_serve_queue_images gauge",
        "snnet_serve_network_requests_total counter",
        "snnet_serve_errors_total counter",
        "snnet_serve_request_latency_seconds histogram",
    ):
        assert f"# TYPE {name}" in body.decode()


def burst(server: Server, image: bytes, rate: float, count: int) -> list[tuple[int, Optional[int], float]]:
    """``count`` requests at Poisson arrivals of ``rate`` per second (open loop): (status, cfg_id, seconds)."""
    import random

    rng = random.Random(0)

    def one() -> tuple[int, Optional[int], float]:
        start = time.monotonic()
        status, answer = server.predict([image])
        return status, answer.get("cfg_id"), time.monotonic() - start

    with ThreadPoolExecutor(48) as pool:
        futures, t = [], time.monotonic()
        for _ in range(count):
            t += rng.expovariate(rate)
            time.sleep(max(0.0, t - time.monotonic()))
            futures.append(pool.submit(one))
        return [f.result() for f in futures]


def test_the_controller_moves_down_under_a_burst_and_back_up(swept, tmp_path):
    ckpt, sweep, pngs = swept
    frontier = [r["cfg_id"] for r in read_results(sweep / "pareto.csv")]
    # the emulated cost: 20 ms per image on the largest network, 50 images/s at most
    s = Server(
        ["--resume", ckpt, "--results", sweep, "--slo-ms", "150", "--add-latency-ms", "20", "--max-batch-size", "4"],
        tmp_path / "serve.log",
    )
    try:
        image = pngs[0].read_bytes()
        calm = burst(s, image, 10, 20)
        assert {c for _, c, _ in calm} == {frontier[-1]}  # light load: the most accurate network
        loaded = burst(s, image, 100, 200)  # twice what the largest network can serve
        assert all(status == 200 for status, _, _ in loaded)  # nothing dropped or failed
        served = [c for _, c, _ in loaded]
        assert sum(c != frontier[-1] for c in served) > len(served) // 2, served
        deadline = time.monotonic() + 30
        while s.get("/healthz")["current_cfg_id"] != frontier[-1]:
            assert time.monotonic() < deadline, s.log.read_text()
            time.sleep(0.2)
        log = s.log.read_text()
        switches = re.findall(r"^slo: switch (down|up) cfg_id (\d+) -> (\d+): \S", log, re.MULTILINE)
        assert switches and switches[0][0] == "down" and switches[-1][0] == "up", log
        assert s.metric("snnet_serve_network_switches_total") == len(switches)  # each logged once
        steps = [(frontier.index(int(a)), frontier.index(int(b))) for _, a, b in switches]
        assert all(b == a + 1 for (d, _, _), (a, b) in zip(switches, steps) if d == "up")  # one step up at a time
    finally:
        assert s.stop() == 0


def test_sigterm_answers_the_requests_in_flight(swept, tmp_path):
    ckpt, sweep, pngs = swept
    s = Server(
        ["--resume", ckpt, "--results", sweep, "--add-latency-ms", "300", "--max-batch-size", "2"], tmp_path / "log"
    )
    image = pngs[0].read_bytes()
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(s.predict, [image]) for _ in range(6)]
        deadline = time.monotonic() + 30
        while s.metric("snnet_serve_requests_in_flight") < 6:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        answers = [f.result(timeout=60) for f in futures]
    assert [status for status, _ in answers] == [200] * 6
    assert all(len(a["predictions"]) == 1 for _, a in answers)
    assert s.stop() == 0
    assert "Stopped: every request in flight answered" in s.log.read_text()


def test_bad_flags_fail_with_one_line(swept, tmp_path, capsys):
    ckpt, sweep, _ = swept
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    cases = [
        ([], "pass either --resume CKPT"),
        (["--resume", ckpt, "--exported", tmp_path / "f.pt"], "pass either --resume CKPT"),
        (["--resume", ckpt, "--max-batch-size", "0"], "--max-batch-size must be >= 1"),
        (["--resume", ckpt, "--slo-ms", "0"], "--slo-ms must be a positive number"),
        (["--resume", ckpt, "--results", tmp_path], "stitches.csv, which does not exist"),
        (["--exported", tmp_path / "missing.pt"], "exported file '.*missing.pt' does not exist"),
        (["--resume", ckpt, "--port", str(taken.getsockname()[1])], "cannot listen on 127.0.0.1:"),
    ]
    try:
        for args, message in cases:
            capsys.readouterr()
            code = run_entry(serve_main, args)
            err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
            assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (args, err)
            assert re.search(message, err[0]), (args, err)
    finally:
        taken.close()


# ---------------------------------------------------------------------------------------------
# the second source: a frontier file (one TorchScript module, every network, select(cfg_id))
# ---------------------------------------------------------------------------------------------
class TinyFrontier(torch.nn.Module):
    """The frontier file's interface on three linear classifiers: ``select(cfg_id); m(x)`` or ``m(x, cfg_id)``."""

    def __init__(self, cfg_ids: list[int]):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.cfg_ids = cfg_ids
        self.weight = torch.nn.Parameter(torch.randn(len(cfg_ids), 10, 3 * 32 * 32, generator=g) * 0.02)
        self.selected = cfg_ids[-1]

    @torch.jit.export
    def select(self, cfg_id: int) -> None:
        self.selected = cfg_id

    def forward(self, x: torch.Tensor, cfg_id: Optional[int] = None) -> torch.Tensor:
        wanted = self.selected if cfg_id is None else cfg_id
        index = self.cfg_ids.index(wanted)
        return x.flatten(1) @ self.weight[index].t()


@pytest.mark.filterwarnings("ignore:.*torch.jit:FutureWarning")
def test_a_frontier_file_is_served_and_budgets_pick_from_its_networks(swept, tmp_path):
    _, _, pngs = swept
    path = tmp_path / "frontier.pt"
    torch.jit.script(TinyFrontier([3, 7, 12])).save(str(path))
    info = {
        "input_size": [3, 32, 32],
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "crop_pct": 1.0,
        "crop_mode": "center",
        "class_names": [f"digit {d}" for d in range(10)],
    }
    networks = [
        {"cfg_id": c, "name": f"net{c}", "flops": f, "params": 30720, "top1": None, "top5": None, "latency_ms": None}
        for c, f in ((3, 1e6), (7, 2e6), (12, 4e6))
    ]
    Path(str(path) + ".json").write_text(json.dumps({**info, "networks": networks, "default_cfg_id": 7}))
    s = Server(["--exported", path], tmp_path / "log")
    try:
        assert s.get("/networks")["networks"] == networks and s.get("/networks")["default_cfg_id"] == 7
        module = torch.jit.load(str(path))
        for fields, cfg_id in (
            ({}, 7),
            ({"budget_flops": "3M"}, 7),
            ({"budget_flops": 5e6}, 12),
            ({"budget_flops": "1M"}, 3),
        ):
            status, answer = s.predict([f.read_bytes() for f in pngs[:4]], **fields)
            assert status == 200 and answer["cfg_id"] == cfg_id, (fields, answer)
            expected = predict(lambda x, c=cfg_id: module(x, c), pngs[:4], info)  # predict.py's own path
            for got, want in zip(answer["predictions"], expected):
                assert got["classes"] == want["classes"] and got["indices"] == want["indices"]
                assert all(abs(a - b) < 1e-6 for a, b in zip(got["probs"], want["probs"]))
        status, answer = s.predict([pngs[0].read_bytes()], budget_ms=5)
        assert status == 400 and "budget_ms needs the networks' latencies" in answer["error"]
    finally:
        assert s.stop() == 0
