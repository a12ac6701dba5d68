"""From a decoded image to a restored image: channel mapping, alpha, tiling, strength, stages.

- A gray image through an RGB network runs as three equal channels and comes back as their mean.
- A color image through the gray (Y) JPEG deblocker: the network restores the full-range BT.601
  luma (the plane JPEG itself stores); the chroma planes come from the color deblocker when one is
  given (``chroma``: it also removes the chroma blocks; at the resolution the JPEG stored them,
  models.chroma), else as the decoder upsampled them. A JPEG above quality 30 is restored by the
  color deblocker alone (``stage_networks``, models.chroma.color_alone).
- Alpha is resized (bicubic) for super-resolution and kept unchanged otherwise.
- ``strength`` blends the result with the input (same-size tasks only); ``auto`` picks it from
  the input's estimated noise (models.noise), and a strength of 0 skips the network. The deblock
  stage takes its strength from the quality of the JPEG file its pixels came from
  (models.deblock_strength): a lightly compressed photo gets little of the network, or none.
- ``run_stages`` runs a pipeline (e.g. deblock then sr): each stage takes the previous output,
  exactly as running the stages one after the other would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image as PILImage

from models import deblock_strength, noise
from models.chroma import color_alone, restore_chroma
from models.chroma import scale_for as chroma_scale
from models.engine import DEFAULT_TILE_BYTES, RestorationModel
from models.imageio import Image, rgb_to_ycbcr
from models.kernels.color import luma, ycbcr_to_rgb_blend
from models.stages import AUTO, DEBLOCK_TASK, STRENGTH_TASK, Strength
from models.tiling import count_tiles

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class StageReport:
    """What one stage did: its model, time, tiling and (denoise) noise estimate and strength."""

    task: str
    model: str
    inference_ms: float
    tile: int
    tiles: int
    redundancy: float
    sigma: float | None = None
    strength: float | None = None
    chroma_model: str | None = None  # the color network that restored a color image's chroma
    jpeg_quality: int | None = None  # deblock: the quality of the JPEG file, which set the strength


def _run(model: RestorationModel, planes: np.ndarray, tile: int | None, progress: Progress | None,
         memory_bytes: int) -> np.ndarray:
    # a view whatever the strides: a photo's H x W x C pixels as a channels_last image (the layout the
    # kernels and oneDNN work in), not a transposed copy the network would convert back
    x = torch.from_numpy(planes).permute(2, 0, 1)[None]
    y = model.restore(x, tile=tile, progress=progress, memory_bytes=memory_bytes).clamp_(0.0, 1.0)
    return y[0].permute(1, 2, 0).numpy()


def _resize_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    h, w = alpha.shape
    im = PILImage.fromarray(alpha.astype(np.float32))
    return np.clip(np.asarray(im.resize((w * scale, h * scale), PILImage.Resampling.BICUBIC)), 0, 1)


def _halves(progress: Progress | None) -> tuple[Progress | None, Progress | None]:
    """One bar for two networks run one after the other: each fills half of it."""
    if progress is None:
        return None, None

    def first(done: int, total: int) -> None:
        progress(done, 2 * total)

    def second(done: int, total: int) -> None:
        progress(total + done, 2 * total)

    return first, second


def _network(model: RestorationModel, img: Image, tile: int | None, progress: Progress | None,
             memory_bytes: int, chroma: RestorationModel | None = None, strength: float = 1.0) -> np.ndarray:
    """The network's output blended with the input by ``strength`` (noise.blend)."""
    net_c = model.config.in_nc
    px = img.pixels
    if net_c == img.channels:
        return noise.blend(px, _run(model, px, tile, progress, memory_bytes), strength)
    if net_c == 3:  # gray image, color network
        gray = _run(model, np.repeat(px, 3, axis=2), tile, progress, memory_bytes).mean(axis=2, keepdims=True)
        return noise.blend(px, gray, strength)
    s = model.scale  # color image, luma network
    if chroma is not None:  # restore_image passes one only where takes_chroma holds
        luma_progress, chroma_progress = _halves(progress)
        y = _run(model, luma(px), tile, luma_progress, memory_bytes)

        def color_network(planes: np.ndarray) -> np.ndarray:
            return _run(chroma, planes, tile, chroma_progress, memory_bytes)

        cbcr = restore_chroma(color_network, px, y, chroma_scale(img.jpeg))
        return ycbcr_to_rgb_blend(y, cbcr, px, strength)
    ycc = rgb_to_ycbcr(px)
    y = _run(model, ycc[..., :1], tile, progress, memory_bytes)
    if s > 1:
        cbcr = np.stack([_resize_alpha(ycc[..., i], s) for i in (1, 2)], axis=-1)
    else:
        cbcr = ycc[..., 1:]
    return ycbcr_to_rgb_blend(y, cbcr, px, strength)


def takes_chroma(model: RestorationModel, chroma: RestorationModel | None, img: Image) -> bool:
    """Whether ``chroma`` restores this image's chroma beside ``model`` (a color photo, a luma net)."""
    return (chroma is not None and model.config.in_nc == 1 and img.channels == 3 and model.scale == 1
            and chroma.config.in_nc == 3)


def stage_networks(model: RestorationModel, chroma: RestorationModel | None,
                   img: Image) -> tuple[RestorationModel, RestorationModel | None]:
    """The network that runs ``model``'s stage on ``img``, and the color network beside it for the
    chroma (or None): a color photo's luma deblock takes its chroma from ``chroma`` (takes_chroma),
    and a JPEG light enough (models.chroma.color_alone) is restored by ``chroma`` alone."""
    if not takes_chroma(model, chroma, img):
        return model, None
    assert chroma is not None
    return (chroma, None) if color_alone(img.jpeg) else (model, chroma)


def resolve_strength(strength: Strength, img: Image) -> tuple[float, float | None]:
    """The strength to apply and, in auto mode, the estimated noise sigma (0..255) it came from."""
    if strength == AUTO:
        sigma = noise.estimate_sigma(img.pixels)
        return noise.auto_strength(sigma), sigma
    return float(strength), None


def restore_image(model: RestorationModel, img: Image, *, tile: int | None = None,
                  progress: Progress | None = None, strength: float = 1.0,
                  memory_bytes: int = DEFAULT_TILE_BYTES, chroma: RestorationModel | None = None) -> Image:
    """Run ``model`` on ``img`` and return the restored image (same mode and bit depth).

    ``memory_bytes`` is the activation budget that sets the tile size (and on CUDA the tile batch).
    ``chroma``: a color network whose chroma a color image takes when ``model`` is a luma network.
    """
    if strength != 1.0 and model.scale != 1:
        raise ValueError("strength blends with the input, so it needs a task that keeps the size")
    if strength <= 0.0:
        if progress is not None:
            progress(1, 1)
        return img
    net, partner = stage_networks(model, chroma, img)
    out = _network(net, img, tile, progress, memory_bytes, partner, strength)
    alpha = img.alpha
    if alpha is not None and model.scale > 1:
        alpha = _resize_alpha(alpha, model.scale)
    return img.with_pixels(np.ascontiguousarray(out, dtype=np.float32), alpha)


def run_stages(models: Sequence[RestorationModel], img: Image, *, tile: int | None = None,
               strength: Strength | None = None, memory_bytes: int = DEFAULT_TILE_BYTES,
               progress: Progress | None = None,
               chroma: RestorationModel | None = None) -> tuple[Image, list[StageReport]]:
    """Run each model on the previous one's output; the final image and one report per stage.

    ``strength`` (default ``auto``) applies to the denoise stage; the other stages run in full.
    ``progress(done, total)`` counts stages in thousandths so a client sees one bar. ``chroma``
    (``engine.load_chroma_partner``) joins a luma deblock stage on a color image.
    """
    reports: list[StageReport] = []
    n = len(models)
    for i, model in enumerate(models):
        denoise = model.config.task == STRENGTH_TASK
        value, sigma = resolve_strength(strength if strength is not None else AUTO, img) \
            if denoise else (1.0, None)
        quality = img.jpeg.quality if model.config.task == DEBLOCK_TASK and img.jpeg is not None else None
        if quality is not None:
            value = deblock_strength.for_quality(quality)
        h, w = img.height, img.width
        net, partner = stage_networks(model, chroma, img)
        side = tile or net.tile_for(h, w, memory_bytes)

        def stage_progress(done: int, total: int, i: int = i) -> None:
            if progress is not None:
                progress(int(1000 * (i + done / max(total, 1)) / n), 1000)

        t0 = time.perf_counter()
        img = restore_image(net, img, tile=side, progress=stage_progress, strength=value,
                            memory_bytes=memory_bytes, chroma=partner)
        ms = (time.perf_counter() - t0) * 1000.0
        skipped = value <= 0.0
        reports.append(StageReport(
            task=model.config.task, model=net.info.name, inference_ms=ms, tile=side,
            tiles=0 if skipped else count_tiles(h, w, side),
            redundancy=0.0 if skipped else net.redundancy(h, w, side),
            sigma=sigma, strength=value if denoise or quality is not None else None,
            chroma_model=partner.info.name if partner is not None else None, jpeg_quality=quality))
    return img, reports
