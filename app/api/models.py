"""``GET /v1/models``: OpenAI's list shape, with what mixdiff knows about its one model."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from app.api.auth import require_api_key
from app.api.submit import default_precision

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], tags=["models"])


@router.get("/models")
async def list_models(request: Request) -> dict:
    """The loaded model: family, default size, parameter counts, precisions and their artifacts."""
    state = request.app.state
    model = state.pool.loaded_model()
    info = model.info
    return {
        "object": "list",
        "data": [
            {
                "id": info["name"],
                "object": "model",
                "created": int(state.started),
                "owned_by": "mixdiff",
                "family": info["family"],
                "path": info["path"],
                "default_size": info["default_size"],
                "prediction_type": info["prediction_type"],
                "max_prompt_tokens": info["max_prompt_tokens"],
                "vae_precision": info["vae_precision"],
                "defaults": info["defaults"],
                "parameters": info["parameters"],
                "precisions": model.precisions,
                "artifacts": info["artifacts"],
                "unavailable": info["unavailable"],
                "schedulers": model.schedulers,
                "default_precision": default_precision(state.settings, model),
                "default_scheduler": state.settings.default_scheduler,
            }
        ],
    }
