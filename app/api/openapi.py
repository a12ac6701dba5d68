"""The OpenAPI document as a contract: every error a problem, the auth this server really asks for.

FastAPI builds the document from the routes; this finishes it in one place: the ``ProblemDetails``
schema on every 4xx/5xx (FastAPI's own 422 model describes a body this service never sends), and
the security schemes, 401 and 429 only where this configuration can ask for a key or limit a caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.access import KeyRing
from app.api.schemas import ProblemDetails
from app.errors import PROBLEM_TYPE
from workers.settings import Settings

_FASTAPI_422 = "#/components/schemas/HTTPValidationError"
_OPERATOR_MARK = "x-bbcu-operator-only"
# openapi_extra of a route only the operator may call (BBCU_METRICS_KEY), not a tenant's key
OPERATOR_ONLY = {_OPERATOR_MARK: True}
_PROBLEM_REF = "#/components/schemas/ProblemDetails"


def operation_id(route: APIRoute) -> str:
    """The route function's name (get_job, restore, ...): what a generated client calls it."""
    return route.name


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the finished document at /openapi.json (built once, on first request)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            ring = KeyRing.from_settings(settings)
            # a caller is limited (429) with a key, or without one where anonymous limits are on
            limits = (ring.enabled or settings.anonymous_limits) and (settings.rate_limit_per_min > 0 or (
                settings.max_active_jobs > 0 or settings.max_event_streams > 0))
            app.openapi_schema = finish(generate(), keys=ring.enabled, operator=ring.operator is not None,
                                        limits=limits)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def finish(doc: dict[str, Any], *, keys: bool, operator: bool, limits: bool) -> dict[str, Any]:
    """The document with problem schemas, and without what this configuration never answers: a route
    asks for a key (security, 401) where API keys are on, an operator-only one where the operator key
    is set (and answers 403 to everyone while keys are on without it)."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    problem = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["ProblemDetails"] = problem
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for item in doc.get("paths", {}).values():
        for op in item.values():
            for param in op.get("parameters", []):
                _not_null(param["schema"])
            operator_only = op.pop(_OPERATOR_MARK, False)
            needs_key = operator if operator_only else keys
            dropped = set() if needs_key else {"401"}
            if not limits:
                dropped.add("429")
            if operator_only and (operator or not keys):
                dropped.add("403")  # answered only while keys are on and no operator key is set
            responses = op["responses"]
            for status in list(responses):
                if status in dropped or _is_fastapi_422(responses[status]):
                    del responses[status]  # a status this route cannot answer here
                elif status[0] in "45":
                    content = responses[status].setdefault("content", {})
                    content.pop("application/json", None)
                    content.setdefault(PROBLEM_TYPE, {})["schema"] = {"$ref": _PROBLEM_REF}
            if not needs_key:
                op.pop("security", None)
    if not keys and not operator:
        doc["components"].pop("securitySchemes", None)
    return doc


def _not_null(schema: dict[str, Any]) -> None:
    """A parameter is left out, never null: pydantic's ``X | None`` becomes plain X (still optional)."""
    options = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    if len(options) == 1:
        del schema["anyOf"]
        schema.update(options[0])
    elif options:
        schema["anyOf"] = options


def _is_fastapi_422(response: dict[str, Any]) -> bool:
    """FastAPI's automatic 422: added to every route with parameters, whether they can fail or not;
    a route that can answer 422 declares its own."""
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref") == _FASTAPI_422)
