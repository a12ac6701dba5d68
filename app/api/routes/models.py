"""The model catalogue."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import SettingsDep
from app.api.examples import MODELS_RESPONSES
from app.api.schemas import ModelList, ModelSummary
from models import catalog

router = APIRouter(tags=["models"])


@router.get("/models", responses=MODELS_RESPONSES)
def list_models(settings: SettingsDep) -> ModelList:
    """The shipped models: task, scale, variant, checksum, evaluation and provenance (no server paths)."""
    return ModelList(models=[ModelSummary(**e.public_summary(), sha256=e.sha256())
                             for e in catalog.entries(settings.weights_dir)])
