"""A property-based fuzz of the OpenAPI schema (schemathesis) against a real `rlhf serve --model tiny`.

Every operation in /openapi.json gets cases that fit its schema and cases that do not (wrong types,
missing fields, values out of range, odd strings), sent over real HTTP. Each answer must not be a
server error (5xx), must use a status code the schema declares for that operation, and must have
the declared content type. Generation is derandomized (the same cases on every run) and bounded
(EXAMPLES per operation and mode), so the fuzz takes a few minutes on two cores.

Every kind of failure is collected (not just the first), each with a case that reproduces it.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]
EXAMPLES = {"POST /v1/chat/completions": 250, "POST /v1/feedback": 250}  # the routes that take client input
DEFAULT_EXAMPLES = 60


def test_openapi_schema_fuzz_finds_no_server_errors(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures: dict[str, str] = {}  # kind of failure -> a case that reproduces it
    tried: dict[str, int] = {}  # cases sent, per operation
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES.get(label, DEFAULT_EXAMPLES), deadline=None, database=None,
                      derandomize=True, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(mode))
            def probe(case):
                response = case.call(base_url=server.url, timeout=120)
                tried[label] = tried.get(label, 0) + 1
                try:
                    case.validate_response(response, checks=CHECKS)
                except FailureGroup as group:
                    for failure in group.exceptions:  # one line per kind of failure, with a case that shows it
                        kind = f"{label}: {response.status_code} {failure.title}"
                        failures.setdefault(kind, f"{kind} ({mode.value}): {case.as_curl_command()}\n"
                                                  f"    -> {response.text[:300]}")

            try:
                probe()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
                assert mode == GenerationMode.NEGATIVE, label
    assert "POST /v1/chat/completions" in tried and "POST /v1/feedback" in tried
    assert not failures, f"{len(failures)} kinds of failure:\n" + "\n".join(failures.values())
