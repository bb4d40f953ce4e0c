"""Serving's Prometheus metrics (default registry; rendered at GET /metrics)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

HTTP_REQUESTS = Counter("rlhf_http_requests_total", "HTTP requests by route and status", ["route", "status"])
HTTP_LATENCY = Histogram("rlhf_http_request_duration_seconds", "HTTP request latency (to the last byte)",
                         ["route", "status"], buckets=LATENCY_BUCKETS)
TTFT = Histogram("rlhf_time_to_first_token_seconds", "Time from request to first generated token",
                 ["adapter"], buckets=LATENCY_BUCKETS)
GENERATED_TOKENS = Counter("rlhf_generated_tokens_total", "Generated tokens", ["adapter"])
PROMPT_TOKENS = Counter("rlhf_prompt_tokens_total", "Prompt tokens", ["adapter"])
COMPLETIONS = Counter("rlhf_completions_total", "Chat completions served", ["adapter", "finish_reason"])
COMPLETION_ERRORS = Counter("rlhf_completion_errors_total", "Chat completion choices lost to an error during "
                            "generation (beside rlhf_completions_total: the error rate per version)", ["adapter"])
INFLIGHT = Gauge("rlhf_inflight_requests", "Chat requests being generated now")
QUEUE_DEPTH = Gauge("rlhf_engine_queue_depth", "Requests inside the vLLM engine (running + waiting)")
UNRECORDED = Counter("rlhf_interactions_unrecorded_total",
                     "Answers served without feedback tokens because the event spool was full")
ENGINE_READY = Gauge("rlhf_engine_ready", "1 once the vLLM engine is ready")
AUTH_REJECTED = Counter("rlhf_auth_rejected_total", "Requests answered 401, by reason (the error code)", ["code"])
QUOTA_REJECTED = Counter("rlhf_quota_rejected_total", "Requests answered 429, by quota", ["quota"])
FEEDBACK_REPEATS = Counter("rlhf_feedback_repeats_total",
                           "Feedback posted again unchanged: answered with the first event id, nothing published")


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP request by route template and status, timing
    streamed responses to their last byte."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def _send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            code = str(status["code"])
            HTTP_REQUESTS.labels(label, code).inc()
            HTTP_LATENCY.labels(label, code).observe(time.perf_counter() - start)
