"""The model catalogue."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import SettingsDep
from models import catalog

router = APIRouter(tags=["models"])


@router.get("/models", responses={200: {"content": {"application/json": {"example": {"models": [
    {"name": "bbcu_sr_x4_l", "task": "sr", "scale": 4, "variant": "l", "file": "bbcu_sr_x4_l.safetensors",
     "size_bytes": 1234567, "sha256": "9d2c...", "config": {"nf": 64, "depth": 16},
     "eval": {"Set5": {"psnr_y": 30.9}}, "training": {}, "provenance": {}}]}}}}})
def list_models(settings: SettingsDep) -> dict[str, Any]:
    """The shipped models: task, scale, variant, checksum, evaluation and provenance."""
    return {"models": [{**e.summary(), "sha256": e.sha256()} for e in catalog.entries(settings.weights_dir)]}
