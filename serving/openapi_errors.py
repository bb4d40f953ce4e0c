"""The OpenAPI schema says what the app answers on errors: OpenAI's error shape, 400 (not FastAPI's
422) for a body that fails validation, 413 for a body over RLHF_MAX_BODY_BYTES, and the error
shape for the other statuses each route declares (401, 403, 404, 429, 503). Clients and the schema fuzz
(tests/serving/test_fuzz.py) read it from /openapi.json.

    document_errors(app)
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}


def document_errors(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {})["ErrorResponse"] = ERROR_SCHEMA
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    responses = operation.setdefault("responses", {})
                    validation = responses.get("422", {}).get("content", {}).get("application/json", {})
                    if "HTTPValidationError" in str(validation.get("schema", "")):
                        del responses["422"]  # FastAPI's own; errors.py answers a failed validation 400
                    if "requestBody" in operation:
                        responses["400"] = _error("Invalid request body (JSON, a field's value or a limit)")
                        responses["413"] = _error("Request body larger than RLHF_MAX_BODY_BYTES")
                    for status, response in responses.items():
                        if status != "default" and int(status) >= 400 and not response.get("content"):
                            responses[status] = _error(response.get("description") or "Error")
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
