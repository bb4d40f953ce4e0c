"""A judge model that follows a fixed rule, behind a small OpenAI-compatible HTTP server.

    python -m harness.rule_judge --port 9000 --prefer longer    # or --prefer shorter

POST /v1/chat/completions reads the two answers out of the question judge/verdict.py writes
("Answer A:" ... "Answer B:" ...) and replies "A" or "B": the longer (or shorter) answer by
characters, "A" on a tie. GET /v1/models lists the one model `rule-judge`. Tests use it where
the tiny model cannot serve: a judge that reliably agrees, or reliably disagrees, with a user's
rule (the tiny model's replies are not verdicts at all).
"""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from judge.verdict import ANSWER_A, ANSWER_B, ASK


def answers(question: str) -> tuple[str, str]:
    """The two answers shown in one judge question."""
    _, _, rest = question.partition(f"{ANSWER_A}\n")
    a, _, rest = rest.partition(f"\n\n{ANSWER_B}\n")
    b, _, _ = rest.rpartition(f"\n\n{ASK}")
    return a, b


def letter(question: str, prefer: str) -> str:
    a, b = answers(question)
    if len(a) == len(b):
        return "A"
    return "A" if (len(a) > len(b)) == (prefer == "longer") else "B"


def make_handler(prefer: str):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": "rule-judge", "object": "model"}]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": "not found"}})
            reply = letter(body["messages"][-1]["content"], prefer)
            self._send(200, {"id": "chatcmpl-rule", "object": "chat.completion", "created": int(time.time()),
                             "model": body.get("model", "rule-judge"),
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                          "finish_reason": "stop"}]})

        def log_message(self, fmt, *args):
            pass

    return Handler


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--prefer", choices=("longer", "shorter"), required=True)
    args = p.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.prefer)).serve_forever()


if __name__ == "__main__":
    main()
