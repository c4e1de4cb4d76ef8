"""The server's Prometheus metrics (``GET /metrics``, text format), in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    """Requests and errors by status, requests and images per network, request latency and
    batch size histograms, queue length, requests in flight, the controller's network and switches."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: a scrape shows the counts, not start times
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "snnet_serve_requests", "POST /predict requests answered, by status", ["status"], registry=r
        )
        self.errors = Counter("snnet_serve_errors", "POST /predict requests refused, by status", ["status"], registry=r)
        self.network_requests = Counter(
            "snnet_serve_network_requests", "requests served, by network", ["cfg_id", "name"], registry=r
        )
        self.network_images = Counter(
            "snnet_serve_network_images", "images served, by network", ["cfg_id", "name"], registry=r
        )
        self.latency = Histogram(
            "snnet_serve_request_latency_seconds",
            "POST /predict latency, from the request's arrival to its answer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_images = Histogram(
            "snnet_serve_batch_images", "images per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.queue = Gauge("snnet_serve_queue_images", "images waiting for a forward pass", registry=r)
        self.in_flight = Gauge("snnet_serve_requests_in_flight", "POST /predict requests being handled", registry=r)
        self.current = Gauge("snnet_serve_current_cfg_id", "the network serving requests without a budget", registry=r)
        self.switches = Counter("snnet_serve_network_switches", "switches of the latency controller", registry=r)

    def text(self) -> bytes:
        return generate_latest(self.registry)
