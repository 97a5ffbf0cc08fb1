"""``GET /v1/models`` and ``GET /v1/models/{id}``: OpenAI's shapes, with what mixdiff knows
about its one model."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.contract import errors
from app.api.guard import GuardedRoute
from app.api.submit import default_precision, default_scheduler, served_sizes
from app.errors import NotFound

router = APIRouter(prefix="/v1", tags=["models"], route_class=GuardedRoute, responses=errors(401, 503))


def _model(request: Request) -> dict:
    """The loaded model: family, sizes, parameter counts, precisions and their artifacts, defaults."""
    state = request.app.state
    model = state.pool.loaded_model()
    info = model.info
    return {
        "id": info["name"],
        "object": "model",
        "created": int(state.started),
        "owned_by": "mixdiff",
        "family": info["family"],
        "path": info["path"],
        "default_size": info["default_size"],
        "sizes": served_sizes(state.settings, model),
        "prediction_type": info["prediction_type"],
        "max_prompt_tokens": info["max_prompt_tokens"],
        "vae_precision": info["vae_precision"],
        "text_encoder_precision": info["text_encoder_precision"],
        "defaults": info["defaults"],
        "parameters": info["parameters"],
        "precisions": model.precisions,
        "artifacts": info["artifacts"],
        "unavailable": info["unavailable"],
        "schedulers": model.schedulers,
        "default_precision": default_precision(state.settings, model),
        "default_scheduler": default_scheduler(state.settings, model),
        "decoders": info["decoders"],
    }


@router.get("/models")
async def list_models(request: Request) -> dict:
    """The served model, as a list of one."""
    return {"object": "list", "data": [_model(request)]}


@router.get("/models/{model_id}", responses=errors(404))
async def retrieve_model(model_id: str, request: Request) -> dict:
    """The served model, by its id."""
    model = _model(request)
    if model_id != model["id"]:
        raise NotFound(f"no model {model_id!r}: this server serves {model['id']!r}", param="model_id")
    return model
