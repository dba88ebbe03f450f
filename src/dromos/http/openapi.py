"""The OpenAPI document: FastAPI's paths, with dromos's schemas and one problem format.

Routes name their bodies by placeholder (``{"$ref": "dromos:JobStatus"}`` for an answer,
``"dromos-task:resize"`` for a task's typed request); this module puts the schemas in the
components and resolves the placeholders. Answers are described from their msgspec Structs
(:func:`~dromos.http.responses.response_components`), requests from their pydantic models, all
of these generated in one pass so that pydantic can tell apart two models of one name (a
task's own ``Item`` and another's); a request model whose name an answer already uses is
renamed. Then every error answer of every operation is described as
``application/problem+json``, including the ones the guard and the body limit may give, which
FastAPI cannot know of: a generated client or a contract test sees every status the gateway
can answer.
"""

from __future__ import annotations

from typing import Any

from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute

from dromos.http.problems import PROBLEM_MEDIA_TYPE
from dromos.http.responses import RESPONSE_STRUCTS, response_components
from dromos.http.schemas import BatchRequest, JobRequest

__all__ = ["ACCEPTED_HEADERS", "build_openapi", "json_body", "task_body"]

_COMPONENTS = "#/components/schemas/"
_DESCRIPTIONS = {
    400: "The body is not JSON, or a header is malformed.",
    401: "No API key, or an unknown one.",
    403: "The API key lacks the scope this needs.",
    404: "No such job, task or route.",
    409: "The job is not in a state that allows this.",
    413: "The request body is over the limit.",
    415: "The request body is not JSON.",
    422: "The input does not fit; `errors` says which and why.",
    429: "Over the rate limit; retry after `Retry-After` seconds.",
    503: "The broker cannot be reached (try again after `Retry-After` seconds).",
}


def json_body(
    model: str, description: str, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A response whose JSON body is the answer Struct named ``model``."""
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"dromos:{model}"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def task_body(task: str | None) -> dict[str, Any]:
    """``openapi_extra`` of an enqueue route: the request body of ``task`` (None: any task)."""
    ref = "dromos:JobRequest" if task is None else f"dromos-task:{task}"
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": ref}}},
        }
    }


def _header(description: str, *, seconds: bool = False) -> dict[str, Any]:
    schema = {"type": "string", "pattern": "^[0-9]+$"} if seconds else {"type": "string"}
    return {"description": description, "required": True, "schema": schema}


ACCEPTED_HEADERS = {
    "Location": _header("Where the job's status is: /v1/jobs/{id}."),
    "Retry-After": _header("Seconds until polling the job is worthwhile.", seconds=True),
}


def _walk(node: Any, refs: dict[str, str]) -> Any:
    """``node`` with every ``$ref`` found in ``refs`` replaced by its value."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref in refs:
            return {**node, "$ref": refs[ref]}
        return {k: _walk(v, refs) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk(v, refs) for v in node]
    return node


def _errors(operation: dict[str, Any], *, keys: bool, rate_limited: bool) -> None:
    """Describe every error answer of ``operation`` as a problem document."""
    responses: dict[str, Any] = operation.setdefault("responses", {})
    guarded = "health" not in operation.get("tags", [])  # the probes need no key
    extra: list[int] = []
    if keys and guarded:
        extra += [401, 403]
    if rate_limited and guarded:
        extra.append(429)
    if "requestBody" in operation:
        extra += [400, 413, 415, 422]
    if guarded:  # every route that reads the broker
        extra.append(503)
    for code in extra:
        responses.setdefault(str(code), {"description": _DESCRIPTIONS[code]})
    problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "dromos:Problem"}}}
    for key, response in responses.items():
        code = int(key) if key.isdigit() else 0
        if code < 400:
            continue
        response["content"] = problem
        response["description"] = _DESCRIPTIONS.get(code, response.get("description"))
        if code in (429, 503):
            response["headers"] = {"Retry-After": _header("Seconds to wait.", seconds=True)}
        if code == 401:
            response["headers"] = {"WWW-Authenticate": _header('Bearer realm="dromos".')}


def _request_components(
    task_models: dict[str, type[BaseModel]], taken: set[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """(component schemas, placeholder -> ref) of the request models, clear of ``taken``."""
    models: list[type[BaseModel]] = [JobRequest, BatchRequest, *task_models.values()]
    marker = "#/request-schemas/"
    refs_by_model, defs = models_json_schema(
        [(m, "validation") for m in models], ref_template=marker + "{model}"
    )
    renamed: dict[str, str] = {}
    for name in defs.get("$defs", {}):
        final, n = name, 2
        while final in taken:
            final, n = f"{name}{n}", n + 1
        taken.add(final)
        renamed[marker + name] = _COMPONENTS + final
    schemas = {renamed[marker + k][len(_COMPONENTS) :]: v for k, v in defs["$defs"].items()}
    placeholders = {
        "dromos:JobRequest": refs_by_model[(JobRequest, "validation")]["$ref"],
        "dromos:BatchRequest": refs_by_model[(BatchRequest, "validation")]["$ref"],
    }
    for task, model in task_models.items():
        placeholders[f"dromos-task:{task}"] = refs_by_model[(model, "validation")]["$ref"]
    resolved: dict[str, Any] = _walk(schemas, renamed)
    return resolved, {k: renamed[v] for k, v in placeholders.items()}


def build_openapi(
    *,
    title: str,
    version: str,
    description: str,
    routes: list[BaseRoute],
    task_models: dict[str, type[BaseModel]],
    keys: bool,
    rate_limited: bool,
) -> dict[str, Any]:
    """The whole document, with every placeholder resolved and every error described."""
    doc = get_openapi(title=title, version=version, description=description, routes=routes)
    answers = response_components(_COMPONENTS + "{name}")
    requests, refs = _request_components(task_models, set(answers))
    refs.update({f"dromos:{s.__name__}": _COMPONENTS + s.__name__ for s in RESPONSE_STRUCTS})
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    # FastAPI's own 422 body is replaced by the problem format; its JobState (of the list's
    # query parameter) is the same enum as the answers'.
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas.update(requests)
    schemas.update(answers)
    for path_item in doc.get("paths", {}).values():
        for operation in path_item.values():
            _errors(operation, keys=keys, rate_limited=rate_limited)
    resolved: dict[str, Any] = _walk(doc, refs)
    return resolved
