"""Training data for BBCU (Xia et al., ICLR 2023): HR images in, degraded/clean patch pairs out.

Any folder of HR images works (DIV2K's ``DIV2K_train_HR`` as is). Patches are sampled uniformly at
random, re-drawn when their mean gradient is low (flat sky, smooth wallpaper), transformed by one
of the 8 dihedral symmetries, then degraded per task (docs/training.md):

- ``sr``: the HR patch is reduced by MATLAB bicubic ``imresize`` and rounded to 8 bits;
- ``denoise``: AWGN with sigma ~ U[0, 75] / 255 per sample, in float, not clipped;
- ``deblock``: the 8-bit luma of the patch, JPEG-encoded at quality ~ randint(0, 50).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor

from models.degrade import imresize, jpeg, rgb_to_luma, to_float, to_uint8
from models.train.shard import SHARD_SUFFIX, read_shard
from models.vocab import TASKS

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
U8 = NDArray[np.uint8]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)


@dataclass(frozen=True)
class TrainImage:
    """One training image: a stable name (for the hold-out split) and its encoded bytes."""

    name: str
    data: bytes

    def rgb(self) -> U8:
        with Image.open(io.BytesIO(self.data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)


def list_images(dirs: Sequence[Path]) -> list[Path]:
    """All image files under the given folders (recursively), sorted; an error if none."""
    files: list[Path] = []
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: not a folder")
        files.extend(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) under {', '.join(map(str, dirs))}")
    return sorted(files)


def load_sources(sources: Sequence[Path]) -> list[TrainImage]:
    """Every training image of the given folders and shard files (``.tar``), sorted by name."""
    folders = [s for s in sources if s.suffix != SHARD_SUFFIX]
    found = [TrainImage(p.name, p.read_bytes()) for p in (list_images(folders) if folders else [])]
    for s in sources:
        if s.suffix == SHARD_SUFFIX:
            if not s.is_file():
                raise FileNotFoundError(f"{s}: no such shard file")
            found.extend(TrainImage(name, data) for name, data in read_shard(s))
    return sorted(found, key=lambda t: t.name)


def data_manifest_sha256(images: Sequence[TrainImage]) -> str:
    """SHA-256 over the sorted (name, content hash) list of every training image."""
    h = hashlib.sha256()
    for t in sorted(images, key=lambda t: t.name):
        h.update(t.name.encode())
        h.update(hashlib.sha256(t.data).digest())
    return h.hexdigest()


def split_holdout(files: Sequence[T], count: int) -> tuple[list[T], list[T]]:
    """(train, held-out): the held-out items are the ``count`` with the smallest name hash."""
    if count <= 0:
        return list(files), []
    if count >= len(files):
        raise ValueError(f"cannot hold out {count} of {len(files)} images")
    ranked = sorted(files, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())
    held = {id(f) for f in ranked[:count]}
    return ([f for f in files if id(f) not in held],
            sorted((f for f in files if id(f) in held), key=lambda f: f.name))


def dihedral(img: NDArray[np.generic], mode: int) -> NDArray[np.generic]:
    """One of the 8 symmetries of the square: mode = 4 * flip + rotation count (counter-clockwise)."""
    if not 0 <= mode < 8:
        raise ValueError(f"dihedral mode must be 0..7, got {mode}")
    out = np.rot90(img, mode % 4, axes=(0, 1))
    if mode >= 4:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def patch_gradient(patch: U8) -> float:
    """Mean absolute neighbour difference of the patch's gray levels (0..255)."""
    g = patch.astype(np.float32).mean(axis=2) if patch.ndim == 3 else patch.astype(np.float32)
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


@dataclass(frozen=True)
class DegradeSpec:
    """What the sampler produces: task, scale, HR patch size and the degradation ranges."""

    task: str
    patch: int
    scale: int = 1
    sigma_max: float = 75.0
    quality_max: int = 50
    min_gradient: float = 2.0
    tries: int = 10
    channels: int = 1  # deblock only: 1 = gray/Y (the paper), 3 = color JPEG
    quality_min: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.patch % self.scale or self.patch < 8 * self.scale:
            raise ValueError(f"patch {self.patch} must be a multiple of scale {self.scale} and >= "
                             f"{8 * self.scale}")


def degrade(hr: U8, spec: DegradeSpec, rng: np.random.Generator) -> tuple[NDArray[np.float32],
                                                                          NDArray[np.float32]]:
    """(low-quality input, target) as float32 HWC in [0, 1] (the noisy input is not clipped)."""
    if spec.task == "sr":
        s = spec.patch // spec.scale
        lr = to_uint8(imresize(to_float(hr), size=(s, s)))
        return lr.astype(np.float32) / np.float32(255), hr.astype(np.float32) / np.float32(255)
    if spec.task == "denoise":
        gt = hr.astype(np.float32) / np.float32(255)
        sigma = rng.uniform(0.0, spec.sigma_max) / 255.0
        return gt + rng.normal(0.0, sigma, gt.shape).astype(np.float32), gt
    q = int(rng.integers(spec.quality_min, spec.quality_max + 1))
    if spec.channels == 3:  # color JPEG as cameras and browsers write it: 4:2:0 chroma
        return (jpeg(hr, q).astype(np.float32) / np.float32(255),
                hr.astype(np.float32) / np.float32(255))
    y = to_uint8(rgb_to_luma(to_float(hr))) if hr.ndim == 3 else hr
    return (jpeg(y, q)[..., None].astype(np.float32) / np.float32(255),
            y[..., None].astype(np.float32) / np.float32(255))


class PatchSampler:
    """Draws batches of (input, target) NCHW float tensors from in-memory HR images."""

    def __init__(self, images: Sequence[U8], spec: DegradeSpec, seed: int = 0) -> None:
        small = [i for i, im in enumerate(images) if min(im.shape[:2]) < spec.patch]
        if small:
            raise ValueError(f"{len(small)} images are smaller than the {spec.patch}-pixel patch")
        if not images:
            raise ValueError("no training images")
        self.images = list(images)
        self.spec = spec
        self.rng = np.random.default_rng(seed)
        areas = np.array([im.shape[0] * im.shape[1] for im in self.images], dtype=np.float64)
        self._p = np.sqrt(areas) / np.sqrt(areas).sum()  # favour large images, not overwhelmingly

    def crop(self) -> U8:
        """A random patch, re-drawn (up to ``tries`` times) while its gradient is low."""
        p = self.spec.patch
        patch = self.images[0][:p, :p]
        for _ in range(self.spec.tries):
            im = self.images[int(self.rng.choice(len(self.images), p=self._p))]
            y = int(self.rng.integers(0, im.shape[0] - p + 1))
            x = int(self.rng.integers(0, im.shape[1] - p + 1))
            patch = im[y:y + p, x:x + p]
            if patch_gradient(patch) >= self.spec.min_gradient:
                break
        return patch

    def sample(self, batch: int) -> tuple[Tensor, Tensor]:
        lqs, gts = [], []
        for _ in range(batch):
            hr = dihedral(self.crop(), int(self.rng.integers(0, 8)))
            lq, gt = degrade(hr, self.spec, self.rng)  # type: ignore[arg-type]
            lqs.append(lq)
            gts.append(gt)
        return _to_tensor(np.stack(lqs)), _to_tensor(np.stack(gts))

    def get_state(self) -> dict[str, object]:
        return dict(self.rng.bit_generator.state)

    def set_state(self, state: dict[str, object]) -> None:
        self.rng.bit_generator.state = state


def _to_tensor(a: NDArray[np.float32]) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def validation_pairs(images: Sequence[U8], spec: DegradeSpec, crop: int = 192,
                     seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """Fixed held-out pairs: a centre crop per image, degraded at the protocol's midpoint setting
    (SR: bicubic x scale; denoise: sigma 25, seed 0; deblock: quality 10)."""
    pairs = []
    for i, im in enumerate(images):
        c = min(crop, im.shape[0], im.shape[1])
        c -= c % spec.scale
        y0, x0 = (im.shape[0] - c) // 2, (im.shape[1] - c) // 2
        hr = im[y0:y0 + c, x0:x0 + c]
        fixed = DegradeSpec(spec.task, c, spec.scale, min_gradient=0.0, channels=spec.channels)
        if spec.task == "denoise":
            gt = hr.astype(np.float32) / np.float32(255)
            rng = np.random.RandomState(seed + i)
            lq = gt + rng.normal(0.0, 25.0 / 255, gt.shape).astype(np.float32)
        elif spec.task == "deblock" and spec.channels == 3:
            lq, gt = jpeg(hr, 10) / np.float32(255), hr / np.float32(255)
        elif spec.task == "deblock":
            y = to_uint8(rgb_to_luma(to_float(hr)))
            lq, gt = jpeg(y, 10)[..., None] / np.float32(255), y[..., None] / np.float32(255)
        else:
            lq, gt = degrade(hr, fixed, np.random.default_rng(seed))
        pairs.append((_to_tensor(lq[None].astype(np.float32)), _to_tensor(gt[None].astype(np.float32))))
    return pairs

