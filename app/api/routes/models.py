"""The model catalogue."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import SettingsDep
from app.api.examples import MODELS_RESPONSES
from models import catalog

router = APIRouter(tags=["models"])


@router.get("/models", responses=MODELS_RESPONSES)
def list_models(settings: SettingsDep) -> dict[str, Any]:
    """The shipped models: task, scale, variant, checksum, evaluation and provenance (no server paths)."""
    return {"models": [{**e.public_summary(), "sha256": e.sha256()}
                       for e in catalog.entries(settings.weights_dir)]}
