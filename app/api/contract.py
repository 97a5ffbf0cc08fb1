"""The OpenAPI schema says what the server does.

Routes declare the errors they can answer with ``errors(...)``: one body schema,
``ErrorBody``, whose ``type`` is the enum of every error type. ``install`` replaces
FastAPI's schema builder with one that writes the limits of the running server into
the request schemas: ``max_steps``, ``max_images`` and the size bounds from the
settings, and, once a worker has loaded the model, its sizes, precisions,
schedulers and decoders as enums. Before the model is loaded the schema lacks those
enums and is rebuilt on the next request; after, it is built once.
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from app.api.schemas import A1111_UNSUPPORTED, MAX_SEED, a1111_samplers
from app.api.submit import served_sizes
from app.errors import ERROR_TYPES
from app.settings import Settings


class ErrorDetail(BaseModel):
    message: str = Field(description="what went wrong and what to change")
    type: Literal[ERROR_TYPES] = Field(description="stable machine-readable kind of error (docs/API.md, Errors)")
    param: str | None = Field(description="the request field at fault, where there is one (dotted path)")
    code: str | None = Field(description="reserved; null")


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail


_ERRORS = {
    400: "unsupported: a well-formed request for something the server does not offer",
    401: "unauthorized: the API key is set and the request lacks it (Authorization: Bearer <key>)",
    404: "not_found: no such job or model",
    413: "payload_too_large: the body is larger than max_body_bytes",
    415: "unsupported_media_type: the body is not sent as application/json",
    422: "invalid_request: the body breaks the schema or the server's limits; `param` names the field",
    429: "overloaded: every worker is busy and the queue is full; retry after Retry-After seconds",
    499: "cancelled: the job was cancelled (POST /v1/jobs/{id}/cancel, /sdapi/v1/interrupt) before it finished",
    500: "generation_failed: the generation failed in the worker",
    503: "not_ready, worker_died, store_unavailable: no worker is loaded (starting, restarting, shutting down), "
    "the worker running the job died, or the shared job store (Redis) does not answer",
    504: "timeout: the job did not finish within request_timeout",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def errors(*statuses: int) -> dict[int, dict]:
    """The ``responses`` entries of a route that can answer with these error statuses."""
    out: dict[int, dict] = {}
    for status in statuses:
        out[status] = {"model": ErrorBody, "description": _ERRORS[status]}
        if status == 429:
            out[status]["headers"] = _RETRY_AFTER
    return out


#: The errors of a route that admits a job: its body, the limits, the queue, the workers
#: (401 is every guarded router's).
ADMISSION_ERRORS = (413, 415, 422, 429, 503)
#: ... and of one that waits for the job's result.
GENERATION_ERRORS = (*ADMISSION_ERRORS, 499, 500, 504)


def _branch(prop: dict, type_: str) -> dict:
    """The ``type_`` form of a property that may also be null (``anyOf``), or the property itself."""
    for form in prop.get("anyOf", [prop]):
        if form.get("type") == type_:
            return form
    raise KeyError(f"no {type_} form in {prop}")


def _limit_request(schema: dict, settings: Settings, model, sizes: list[int] | None) -> None:
    """Write the server's limits and the model's names into a request body schema (``GenerateRequest``,
    ``ImageGenerationRequest``, ``Txt2ImgRequest``): each family's fields that it has."""
    props = schema["properties"]
    _branch(props["seed"], "integer")["maximum"] = MAX_SEED  # exact: FastAPI writes bounds as floats
    _branch(props["steps"], "integer")["maximum"] = settings.max_steps
    for name in ("n", "batch_size", "n_iter"):
        if name in props:
            props[name]["maximum"] = settings.max_images
    for name in ("width", "height"):
        if name in props:
            form = _branch(props[name], "integer")
            if sizes is not None:
                form["enum"] = sizes
            else:
                form.update(minimum=settings.min_size, maximum=settings.max_size, multipleOf=8)
    if "size" in props:
        if sizes is not None:
            _branch(props["size"], "string")["enum"] = ["auto"] + [f"{w}x{h}" for w in sizes for h in sizes]
        else:
            edges = range(-(-settings.min_size // 8) * 8, settings.max_size + 1, 8)
            edge = "|".join(map(str, edges))
            _branch(props["size"], "string")["pattern"] = f"^(auto|({edge})x({edge}))$"
    if "response_format" in props:  # 'url' is refused with 400: the server does not host images
        props["response_format"]["enum"] = ["b64_json"]
    precision = props["precision"]["anyOf"][0]
    lists = _branch(precision, "array")
    lists["maxItems"] = settings.max_steps
    # steps and a per-step list cannot both be given: the list sets the step count
    schema["not"] = {
        "required": ["steps", "precision"],
        "properties": {"steps": {"type": "integer"}, "precision": {"type": "array"}},
    }
    for name, (default, _) in A1111_UNSUPPORTED.items():
        if name in props:  # A1111's, accepted at their defaults only
            props[name] = {"anyOf": [{"const": default}, {"type": "null"}], "default": default}
    if model is None:
        return
    for name in ("sampler_name", "sampler_index"):
        if name in props:
            _branch(props[name], "string")["enum"] = list(a1111_samplers(model.schedulers))
    if "scheduler" in props:
        _branch(props["scheduler"], "string")["enum"] = list(model.schedulers)
    if "decoder" in props:
        _branch(props["decoder"], "string")["enum"] = list(model.info["decoders"])
    _branch(precision, "string")["enum"] = list(model.precisions)
    lists["items"]["enum"] = list(model.precisions)


def _limit_split(schema: dict, model) -> None:
    """A split schedule names the model's precisions; a default it lacks must be given."""
    if model is None:
        return
    for name in ("high", "low"):
        prop = schema["properties"][name]
        prop["enum"] = list(model.precisions)
        if prop.get("default") not in model.precisions:
            prop.pop("default", None)
            schema.setdefault("required", []).append(name)


def _drop_fastapi_422(schema: dict) -> None:
    """FastAPI documents a 422 with its own body for every route with parameters; a route
    whose body can fail validation documents mixdiff's (``errors(422)``), and a path
    parameter cannot fail, so FastAPI's are dropped with their schemas."""
    fastapi_body = {"$ref": "#/components/schemas/HTTPValidationError"}
    for operations in schema["paths"].values():
        for operation in operations.values():
            response = operation["responses"].get("422", {})
            if response.get("content", {}).get("application/json", {}).get("schema") == fastapi_body:
                del operation["responses"]["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(name, None)


def openapi_schema(app: FastAPI) -> dict:
    state = app.state
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
    )
    model = state.pool.model
    sizes = served_sizes(state.settings, model) if model is not None else None
    _drop_fastapi_422(schema)
    components = schema["components"]["schemas"]
    for name in ("GenerateRequest", "ImageGenerationRequest", "Txt2ImgRequest"):
        _limit_request(components[name], state.settings, model, sizes)
    _limit_split(components["SplitSchedule"], model)
    if model is not None:  # the id GET /v1/models/{model_id} answers for
        (parameter,) = schema["paths"]["/v1/models/{model_id}"]["get"]["parameters"]
        parameter["example"] = model.info["name"]
    return schema


def install(app: FastAPI) -> None:
    """Serve ``openapi_schema`` at /openapi.json (and /docs), kept once the model is loaded."""

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = openapi_schema(app)
        if app.state.pool.model is not None:
            app.openapi_schema = schema
        return schema

    app.openapi = openapi
