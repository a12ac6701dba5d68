"""The query of ``POST /restore`` as one typed model: the route reads it, the submission uses it.

Each closed option is checked here, with the same values the OpenAPI schema lists (an enum, a range),
so a request that is valid by the schema is valid for the server and one that is not gets a 422.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from app.callbacks import EVENTS_PATTERN
from models.errors import OptionError
from models.stages import AUTO, PIPELINES, Strength, parse_pipeline
from models.vocab import SR_SCALES, VARIANTS, Format
from workers.contract import Device


def _pipeline(text: str) -> str:
    """A task or pipeline exactly as the schema lists it (lower case, no spaces)."""
    try:
        tasks = parse_pipeline(text)
    except OptionError as e:
        raise ValueError(str(e)) from None
    if ",".join(tasks) != text:
        raise ValueError(f"write the task as {','.join(tasks)!r} (lower case, no spaces)")
    return text


def _variant(text: str) -> str:
    if text not in VARIANTS:
        raise ValueError(f"no network variant={text}; choose from {', '.join(VARIANTS)}")
    return text


def _scale(value: int) -> int:
    if value not in SR_SCALES:
        raise ValueError(f"scale {value} is not supported for sr; "
                         f"choose from {', '.join(map(str, SR_SCALES))}")
    return value


def _strength(value: Any) -> Strength:
    """``auto`` or a number from 0 to 1 (0 keeps the input)."""
    if value == AUTO:
        return AUTO
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"strength must be 'auto' or a number from 0 to 1, got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"strength must be from 0 to 1 (or 'auto'), got {number:g}")
    return number


Pipeline = Annotated[str, AfterValidator(_pipeline),
                     WithJsonSchema({"type": "string", "enum": list(PIPELINES)})]
Variant = Annotated[str, Field(min_length=1), AfterValidator(_variant),
                    WithJsonSchema({"type": "string", "enum": list(VARIANTS)})]
StrengthOption = Annotated[Strength, BeforeValidator(_strength), WithJsonSchema(
    {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "string", "enum": [AUTO]}]})]
Scale = Annotated[int, AfterValidator(_scale), WithJsonSchema({"type": "integer", "enum": list(SR_SCALES)})]

CallbackEvents = Annotated[str, WithJsonSchema({"type": "string", "pattern": EVENTS_PATTERN})]


class RestoreParams(BaseModel):
    """The query of ``POST /restore``."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    task: Pipeline = Field(description="sr, denoise or deblock, or a pipeline run in order such as "
                                       "deblock,sr or denoise,sr")
    scale: Scale | None = Field(default=None, description="sr only: 2, 3 or 4 (default 4)")
    variant: Variant | None = Field(default=None, description="network variant: l (default) or m")
    strength: StrengthOption | None = Field(default=None, description="denoise only: auto (default: from "
                                                                       "the estimated noise) or 0..1 "
                                                                       "(0 keeps the input)")
    format: Format | None = Field(
        default=None, description="png (default for a still, else from Accept), webp, jpeg, tiff or gif (png "
                                  "and tiff keep a 16-bit input 16-bit); an animation or a video keeps its "
                                  "container by default (gif/png/webp; mp4/webm/mov)")
    quality: int | None = Field(default=None, ge=1, le=100, description="jpeg/webp quality (default 95)")
    device: Device = Field(default="auto", description="auto picks a GPU worker when one is alive")
    tile: int | None = Field(default=None, ge=32, le=8192, description="tile size in input pixels")
    async_: bool = Field(default=False, alias="async", description="answer 202 with a job at once")
    callback_url: str | None = Field(default=None, min_length=1,
                                     description="POST the signed job record here (BBCU_WEBHOOK_HOSTS)")
    # checked with the URL (app.callbacks), whose 422 names the unknown event
    callback_events: CallbackEvents | None = Field(
        default=None, description="comma list of start, progress, completed (default completed)")

    @property
    def tasks(self) -> tuple[str, ...]:
        """The pipeline's tasks in order (the text was checked against the pipelines)."""
        return tuple(self.task.split(","))
