"""The API's request guard and Prometheus instruments: body size limit, rate limit per client, request
counts and latency per route, batch sizes, the serving version, degradation, impressions."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MAX_BODY_BYTES = 64 * 1024


class ClientRateLimit:
    """At most `rate` requests per client address (a moving window of the `limits` library, in memory:
    per process); the monitoring routes are never limited. An empty rate limits nothing."""

    UNLIMITED_PATHS = ("/health", "/metrics")

    def __init__(self, rate: str):
        from limits import parse_many, storage, strategies

        self.items = parse_many(rate) if rate else []
        self.limiter = strategies.MovingWindowRateLimiter(storage.MemoryStorage())

    def retry_after(self, scope) -> int | None:
        """None when the request may go on; else the seconds until its client may ask again."""
        if not self.items or scope["path"] in self.UNLIMITED_PATHS:
            return None
        client = (scope.get("client") or ("unknown",))[0]
        for item in self.items:
            if not self.limiter.hit(item, "client", client):
                reset = self.limiter.get_window_stats(item, "client", client).reset_time
                return max(1, math.ceil(reset - time.time()))
        return None


class GuardAndMeasure:
    """Pure ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware on the hot path): refuses bodies
    over MAX_BODY_BYTES with 413 and clients over their rate with 429, and counts requests and their
    latency per route for /metrics."""

    def __init__(self, app, requests: Counter, latency: Histogram, limit: ClientRateLimit | None = None):
        self.app, self.requests, self.latency, self.limit = app, requests, latency, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.limit is not None and (wait := self.limit.retry_after(scope)) is not None:
            self.requests.labels("rate limited", "429").inc()
            detail = f"too many requests from this client; retry in {wait} s"
            response = JSONResponse({"detail": detail}, status_code=429, headers={"Retry-After": str(wait)})
            return await response(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return await self._too_large(send)
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body, more = b"", True
            while more:  # a chunked body: read it (up to the limit) before the app sees it
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > MAX_BODY_BYTES:
                    return await self._too_large(send)
            replayed = False

            async def receive():
                nonlocal replayed
                if replayed:
                    return {"type": "http.disconnect"}
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

        status = {"code": 500}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.latency.labels(endpoint).observe(time.perf_counter() - started)
            self.requests.labels(endpoint, str(status["code"])).inc()

    @staticmethod
    async def _too_large(send) -> None:
        await JSONResponse({"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413)(
            {"type": "http"}, None, send
        )


@dataclass
class Instruments:
    """The Prometheus metrics of one app (its own registry, so that two apps in a process never mix)."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    batch_sizes: Histogram
    serving: Gauge  # 1 for the version actually serving
    degraded: Gauge  # 1 when the alias names a version that is not serving (or nothing serves)
    impressions: Counter  # lists logged, per arm and whether shown
    impressions_dropped: Counter  # lists not logged because the queue was full
    impressions_capped: Counter  # lists not logged because their reader's per-minute cap was reached
    online: Gauge  # online metrics of the last days, per version, arm and metric
    standing: Gauge  # readers whose standing list the serving version keeps

    @classmethod
    def create(cls) -> Instruments:
        registry = CollectorRegistry()
        return cls(
            registry,
            Counter("bookrec_requests", "HTTP requests", ["endpoint", "status"], registry=registry),
            Histogram(
                "bookrec_request_seconds",
                "Request latency",
                ["endpoint"],
                registry=registry,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            ),
            Histogram(
                "bookrec_rank_batch_size",
                "Recommendation requests scored together",
                registry=registry,
                buckets=(1, 2, 4, 8, 16, 32),
            ),
            Gauge(
                "bookrec_serving_version",
                "The registry version serving requests",
                ["version"],
                registry=registry,
            ),
            Gauge("bookrec_model_degraded", "1 when production could not be loaded", registry=registry),
            Counter("bookrec_impressions", "Served lists logged", ["arm", "shown"], registry=registry),
            Counter("bookrec_impressions_dropped", "Served lists not logged: queue full", registry=registry),
            Counter(
                "bookrec_impressions_capped",
                "Served lists not logged: the reader's impressions per minute (serve.limits) were reached",
                registry=registry,
            ),
            Gauge(
                "bookrec_online",
                "Online metrics of the served lists (last 7 days)",
                ["version", "arm", "metric"],
                registry=registry,
            ),
            Gauge("bookrec_standing_lists", "Readers whose standing list is kept", registry=registry),
        )
