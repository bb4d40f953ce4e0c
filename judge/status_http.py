"""The judge's GET /metrics (Prometheus) and GET /healthz (its state as JSON) on RLHF_JUDGE_PORT."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


def start_http(host: str, port: int, health: Callable[[], dict]) -> ThreadingHTTPServer:
    """Serve on a daemon thread; `health()` is the /healthz body (a paused judge is healthy: it still measures)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path.startswith("/metrics"):
                body, ctype, code = generate_latest(REGISTRY), CONTENT_TYPE_LATEST, 200
            elif self.path.startswith("/healthz"):
                body, ctype, code = json.dumps(health()).encode(), "application/json", 200
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):  # quiet: Prometheus scrapes often
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="judge-http", daemon=True).start()
    return server
