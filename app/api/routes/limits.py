"""The size limits of uploads and images, per task."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import SettingsDep
from app.api.examples import LIMITS_RESPONSES
from app.api.schemas import Limits
from models.vocab import SR_SCALES

router = APIRouter(tags=["limits"])


@router.get("/limits", responses=LIMITS_RESPONSES)
def get_limits(settings: SettingsDep) -> Limits:
    """The largest upload and image accepted: inputs by pixels, super-resolution by its output, and
    every job by its estimated operations (giga-operations; the network's per pixel times the pixels)."""
    by_task: dict[str, int] = {"denoise": settings.max_pixels, "deblock": settings.max_pixels}
    for s in SR_SCALES:
        by_task[f"sr_x{s}"] = min(settings.max_pixels, settings.max_output_pixels // (s * s))
    return Limits(max_upload_bytes=settings.max_upload_bytes, max_input_pixels=settings.max_pixels,
                  max_output_pixels=settings.max_output_pixels, max_input_pixels_by_task=by_task,
                  max_job_gops=settings.max_job_gops)
