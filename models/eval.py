"""The evaluation protocol of BBCU (Xia et al., ICLR 2023; docs/evaluation.md) over a folder of images.

- ``sr``: HR cropped to a multiple of the scale, LR by MATLAB-compatible bicubic ``imresize``
  (rounded to 8 bits), Y-channel (BT.601) PSNR/SSIM with ``scale`` border pixels cropped; the
  baseline is the bicubic upscaling of the LR image.
- ``denoise``: AWGN N(0, sigma / 255) added in float, unclipped, from ``numpy.random.seed(0)``
  drawn image after image in sorted order (as the KAIR test scripts do); RGB PSNR/SSIM of the
  output quantized to 8 bits; the baseline is the noisy input (clipped and quantized).
- ``deblock``: the 8-bit gray image (full-range luma of a colour image), JPEG at quality ``q``
  with Pillow; PSNR/SSIM of the 8-bit output; the baseline is the JPEG image. A color deblocking
  network (this project's, not the paper's) gets the RGB image as a 4:2:0 color JPEG, scored on RGB;
  so does ``color=True`` for a gray network, restored as the service restores a color photo (luma
  by the network, chroma by ``chroma`` when given, else the decoder's).

Inference goes through ``models.engine`` (deploy form, tiled).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from models import jpeg_info
from models.degrade import (
    bicubic_lr,
    decode_jpeg,
    imresize,
    jpeg,
    jpeg_bytes,
    rgb_to_luma,
    to_float,
    to_uint8,
)
from models.engine import RestorationModel
from models.metrics import psnr, ssim, y_psnr, y_ssim

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
U8 = NDArray[np.uint8]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Row:
    image: str
    psnr: float
    ssim: float
    baseline_psnr: float
    baseline_ssim: float


@dataclass
class Report:
    task: str
    dataset: str
    setting: str
    baseline: str
    metric: str
    model: str
    sha256: str
    rows: list[Row] = field(default_factory=list)

    @property
    def mean(self) -> dict[str, float]:
        if not self.rows:
            return {}
        keys = ("psnr", "ssim", "baseline_psnr", "baseline_ssim")
        return {k: float(np.mean([getattr(r, k) for r in self.rows])) for k in keys}

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.setting}"

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "dataset": self.dataset, "setting": self.setting,
                "baseline": self.baseline, "metric": self.metric, "model": self.model,
                "sha256": self.sha256, "images": len(self.rows),
                "mean": {k: round(v, 4) for k, v in self.mean.items()},
                "rows": [asdict(r) for r in self.rows]}

    def summary(self) -> dict[str, Any]:
        """The compact form stored in a weights file's ``eval`` metadata (strict JSON: an infinite
        PSNR, the baseline of a sigma-0 run, is stored as null)."""
        m = self.mean
        return {"psnr": _finite(m["psnr"], 3), "ssim": _finite(m["ssim"], 4),
                "baseline": self.baseline, "baseline_psnr": _finite(m["baseline_psnr"], 3),
                "baseline_ssim": _finite(m["baseline_ssim"], 4), "metric": self.metric,
                "images": len(self.rows)}

    def table(self) -> str:
        w = max([len("mean")] + [len(r.image) for r in self.rows])
        head = (f"{'image':<{w}}  {'PSNR':>7}  {'SSIM':>6}  {self.baseline + ' PSNR':>14}  "
                f"{self.baseline + ' SSIM':>14}")
        lines = [f"{self.task} {self.setting} on {self.dataset} ({self.metric}), model {self.model}", head,
                 "-" * len(head)]
        rows = [*self.rows, Row("mean", *(self.mean[k] for k in ("psnr", "ssim", "baseline_psnr",
                                                                  "baseline_ssim")))]
        for i, r in enumerate(rows):
            if i == len(self.rows):
                lines.append("-" * len(head))
            lines.append(f"{r.image:<{w}}  {r.psnr:7.2f}  {r.ssim:6.4f}  {r.baseline_psnr:14.2f}  "
                         f"{r.baseline_ssim:14.4f}")
        return "\n".join(lines)


def _finite(v: float, digits: int) -> float | None:
    return round(v, digits) if np.isfinite(v) else None


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_EXTS)})")
    return files


def read_image(path: Path) -> U8:
    """8-bit RGB (H, W, 3) for colour files, (H, W) for grayscale ones."""
    with Image.open(path) as im:
        if im.mode in ("L", "I;16", "I"):
            return np.asarray(im.convert("L"), dtype=np.uint8)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _run(model: RestorationModel, img: NDArray[np.floating], tile: int | None) -> NDArray[np.float64]:
    a = np.asarray(img, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]
    out = model.restore(t, tile=tile)
    return out[0].numpy().transpose(1, 2, 0).astype(np.float64)


def _check_task(model: RestorationModel, task: str, scale: int | None = None) -> None:
    if model.config.task != task:
        raise ValueError(f"the weights hold a {model.config.task} network, not {task}")
    if scale is not None and model.scale != scale:
        raise ValueError(f"the weights are for x{model.scale}, not x{scale}")


def eval_sr(model: RestorationModel, files: Sequence[Path], tile: int | None = 512,
            progress: Progress | None = None) -> list[Row]:
    _check_task(model, "sr")
    s = model.scale
    rows = []
    for f in files:
        hr = read_image(f)
        if hr.ndim == 2:
            hr = np.repeat(hr[..., None], 3, axis=2)
        hr = hr[:hr.shape[0] - hr.shape[0] % s, :hr.shape[1] - hr.shape[1] % s]
        lr = bicubic_lr(hr, s)
        sr = to_uint8(_run(model, to_float(lr), tile))
        bic = to_uint8(imresize(to_float(lr), scale=s))
        rows.append(Row(f.name, y_psnr(sr, hr, s), y_ssim(sr, hr, s), y_psnr(bic, hr, s), y_ssim(bic, hr, s)))
        if progress:
            progress(f"{f.name}: {rows[-1].psnr:.2f} dB")
    return rows


def eval_denoise(model: RestorationModel, files: Sequence[Path], sigma: float, seed: int = 0,
                 tile: int | None = 512, progress: Progress | None = None) -> list[Row]:
    _check_task(model, "denoise")
    rng = np.random.RandomState(seed)
    rows = []
    for f in files:
        gt = read_image(f)
        if gt.ndim == 2:
            gt = np.repeat(gt[..., None], 3, axis=2)
        noisy = to_float(gt) + rng.normal(0.0, sigma / 255.0, gt.shape)
        out = to_uint8(_run(model, noisy, tile))
        base = to_uint8(noisy)
        rows.append(Row(f.name, psnr(out, gt), ssim(out, gt), psnr(base, gt), ssim(base, gt)))
        if progress:
            progress(f"{f.name}: {rows[-1].psnr:.2f} dB")
    return rows


def eval_deblock(model: RestorationModel, files: Sequence[Path], quality: int, tile: int | None = 512,
                 progress: Progress | None = None, *, color: bool = False,
                 chroma: RestorationModel | None = None) -> list[Row]:
    """Gray networks: the 8-bit luma through JPEG. Color networks (or ``color``): the RGB image through
    a color JPEG (4:2:0, as Pillow and cameras write it), restored as the service restores the file
    (the strength it takes from the JPEG's quality included: models.deblock_strength), scored on RGB."""
    from models.imageio import Image as Decoded
    from models.pipeline import run_stages

    _check_task(model, "deblock")
    color = color or model.config.in_nc == 3
    rows = []
    for f in files:
        img = read_image(f)
        if color:
            gt = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
            data = jpeg_bytes(gt, quality)
            lq = decode_jpeg(data, gray=False)
            # the file's quality and chroma subsampling, as the service's decoder reads them
            decoded = Decoded(pixels=to_float(lq).astype(np.float32), jpeg=jpeg_info.of_bytes(data))
            out = to_uint8(run_stages([model], decoded, tile=tile, chroma=chroma)[0].pixels)
        else:
            gt = img if img.ndim == 2 else to_uint8(rgb_to_luma(to_float(img)))
            lq = jpeg(gt, quality)
            out = to_uint8(_run(model, to_float(lq)[..., None], tile))[..., 0]
        rows.append(Row(f.name, psnr(out, gt), ssim(out, gt), psnr(lq, gt), ssim(lq, gt)))
        if progress:
            progress(f"{f.name}: {rows[-1].psnr:.2f} dB")
    return rows


def evaluate(model: RestorationModel, task: str, folder: Path, *, sigma: float = 25.0, quality: int = 10,
             seed: int = 0, tile: int | None = 512, limit: int | None = None,
             progress: Progress | None = None, color: bool = False,
             chroma: RestorationModel | None = None) -> Report:
    """Run the protocol for ``task`` on every image of ``folder`` (the first ``limit`` if given);
    ``color`` and ``chroma``: deblock on color JPEGs as the service restores them (eval_deblock)."""
    files = list_images(folder)[:limit]
    name, sha = model.info.name, model.info.sha256
    if task == "sr":
        rows = eval_sr(model, files, tile, progress)
        rep = Report(task, folder.name, f"x{model.scale}", "bicubic", "Y-PSNR/SSIM, border = scale",
                     name, sha)
    elif task == "denoise":
        if not 0 <= sigma <= 255:
            raise ValueError(f"sigma must be in 0..255, got {sigma}")
        rows = eval_denoise(model, files, sigma, seed, tile, progress)
        rep = Report(task, folder.name, f"sigma{sigma:g}", "noisy", "RGB PSNR/SSIM, 8-bit output", name, sha)
    elif task == "deblock":
        if not 0 <= quality <= 100:
            raise ValueError(f"JPEG quality must be in 0..100, got {quality}")
        rows = eval_deblock(model, files, quality, tile, progress, color=color, chroma=chroma)
        metric = "RGB" if color or model.config.in_nc == 3 else "gray/Y"
        if chroma is not None:
            name += f" (chroma: {chroma.info.name})"
        rep = Report(task, folder.name, f"q{quality}", "jpeg", f"{metric} PSNR/SSIM, 8-bit output", name, sha)
    else:
        raise ValueError(f"unknown task {task!r}; expected sr, denoise or deblock")
    rep.rows = rows
    return rep


def record(weights: Path, report: Report) -> None:
    """Merge the report's summary into the weights file's ``eval`` metadata (tensors unchanged)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(weights), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    try:
        evals = json.loads(meta.get("eval", "{}"))
    except json.JSONDecodeError:
        evals = {}
    if not isinstance(evals, dict):
        evals = {}
    summary = report.summary()
    evals[report.key] = summary
    # flat headline numbers too, for listings that show scalar "...psnr" entries (bbcu models)
    evals = {k: v for k, v in evals.items() if not k.startswith(f"{report.key} ")}
    evals[f"{report.key} psnr"] = summary["psnr"]
    evals[f"{report.key} psnr ({report.baseline})"] = summary["baseline_psnr"]
    meta["eval"] = json.dumps(evals, sort_keys=True)
    tmp = weights.with_suffix(weights.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(weights)

