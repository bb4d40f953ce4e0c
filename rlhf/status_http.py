"""A background process's own small HTTP server: GET /metrics (Prometheus) and GET /healthz (JSON).

    server = start_status_http(host, port, health, name="learner-http")   # health() -> (status code, body)

The learner and the judge have no web framework; their probes and Prometheus read this. It runs
on a daemon thread and logs nothing per request (Prometheus scrapes often).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

Health = Callable[[], tuple[int, dict]]


def start_status_http(host: str, port: int, health: Health, *, name: str) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz on a daemon thread named `name`; anything else is 404."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path.startswith("/metrics"):
                body, ctype, code = generate_latest(REGISTRY), CONTENT_TYPE_LATEST, 200
            elif self.path.startswith("/healthz"):
                code, info = health()
                body, ctype = json.dumps(info).encode(), "application/json"
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
