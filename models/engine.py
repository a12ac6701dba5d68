"""The inference engine: a typed model descriptor around a deploy-form BBCU network.

``load_model(name_or_path, device=...)`` returns a ``RestorationModel``; calling it maps an NCHW
float tensor in 0..1 to the restored tensor. ``model.restore`` does the same on a host tensor of
any size in seam-free tiles. ``model.info`` describes the network (task, scale, variant, counts,
OPs, weights checksum, which compute path runs).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models import archs, catalog, checkpoints, deploy
from models.complexity import count
from models.config import NetworkConfig
from models.errors import DeviceUnavailableError, UnknownModelError
from models.precision import ieee_fp32
from models.tiling import Progress, choose_tile, redundancy, run_tiled
from models.vocab import BACKENDS, DEFAULT_TILE_MEMORY_MB, PRECISIONS

DEFAULT_TILE_BYTES = DEFAULT_TILE_MEMORY_MB << 20
# Below 4 x the receptive radius (~38 px for SR) the overlap would cost more than 2.25x the tile.
MIN_TILE_RADII = 4


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: str
    scale: int
    variant: str
    in_channels: int
    out_channels: int
    features: int
    depth: int
    k: float
    binary_parts: list[str]
    float_params: int
    binary_params: int
    unit_params: int
    params_paper: float
    sha256: str
    source: str
    device: str
    backend: str
    receptive_radius: int
    precision: str
    config: NetworkConfig = field(repr=False)
    metadata: dict[str, Any] = field(default_factory=dict)

    def ops(self, height: int = 180, width: int = 320) -> dict[str, float]:
        """FLOPs, BOPs and OPs (paper convention) for one input of the given size."""
        c = count(self.config, height, width)
        return {"flops": c.flops, "bops": c.bops, "ops_paper": c.ops_paper,
                "height": height, "width": width}

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = self.config.to_dict()
        d["ops_320x180"] = self.ops()
        return d


def resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("device 'cuda' requested but no CUDA device is available")
    return dev


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that ``backend`` means on ``device``; ValueError if it cannot run there."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if device.type == "cuda":
        if backend == "bitpacked":
            raise ValueError("the bitpacked backend runs on the CPU only")
        if backend == "fused":
            from models.kernels import fused

            if not fused.available():
                raise ValueError(f"fused kernels unavailable: {fused.unavailable_reason()}")
        return "fp16" if backend == "auto" else backend
    if backend in ("fp16", "fused"):
        raise ValueError(f"the {backend} backend runs on CUDA only")
    if backend in ("auto", "bitpacked"):
        from models import kernels

        if kernels.available():
            return "bitpacked"
        if backend == "bitpacked":
            raise ValueError(f"bitpacked kernels unavailable: {kernels.unavailable_reason()}")
    return "float"


def resolve_precision(precision: str, device: torch.device) -> str:
    """The float arithmetic a model runs with; ValueError where it cannot run as asked."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    if precision == "bf16":
        if device.type != "cpu":
            raise ValueError("precision bf16 is for the CPU engine (the CUDA engine has backend fp16)")
        if not bf16_supported():
            raise ValueError("precision bf16 needs a CPU with bf16 instructions (AVX-512 BF16 or AMX); "
                             "this one has neither")
    return precision


def bf16_supported() -> bool:
    """Whether this CPU computes bf16 convolutions natively (else oneDNN would emulate them slowly)."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def radius_of(config: NetworkConfig) -> int:
    return archs.for_config(config).receptive_radius(config)


class RestorationModel:
    """A loaded network ready for inference; one call runs at a time per instance."""

    def __init__(self, net: nn.Module, config: NetworkConfig, *, name: str, sha256: str,
                 source: str, device: str | torch.device = "cpu", backend: str = "auto",
                 metadata: dict[str, Any] | None = None, precision: str = "fp32") -> None:
        self.device = resolve_device(device)
        self.config = config
        self.backend = resolve_backend(backend, self.device)
        self.precision = resolve_precision(precision, self.device)
        net = deploy.to_deploy(net, deploy.counts_fp16 if self.backend == "fp16" else deploy.counts_float)
        if self.backend == "bitpacked":
            from models import kernels

            net = kernels.to_bitpacked(net)
        elif self.backend == "fused":
            from models.kernels import fused

            net = fused.convert(net)
        # NHWC: oneDNN's float convolutions are faster (~15%) and the bit-packed units read and
        # write NHWC without transposes (measured: denoise 0.50 s vs 0.66 s NCHW)
        self._memory_format = torch.channels_last
        self.net = net.to(self.device).to(memory_format=self._memory_format)  # type: ignore[call-overload]
        self._lock = threading.Lock()
        c = count(config)
        self.info = ModelInfo(
            name=name, task=config.task, scale=config.scale, variant=config.variant,
            in_channels=config.in_nc, out_channels=config.out_nc, features=config.nf,
            depth=config.depth, k=config.k, binary_parts=sorted(config.binary),
            float_params=c.float_params, binary_params=c.binary_params, unit_params=c.unit_params,
            params_paper=c.params_paper, sha256=sha256, source=source, device=str(self.device),
            backend=self.backend, receptive_radius=radius_of(config), precision=self.precision,
            config=config, metadata=dict(metadata or {}))

    @property
    def scale(self) -> int:
        return self.config.scale

    def __call__(self, batch: Tensor) -> Tensor:
        """Restore an NCHW float batch in 0..1; the result is on the batch's device."""
        if batch.ndim != 4 or batch.shape[1] != self.config.in_nc:
            raise ValueError(f"expected an N x {self.config.in_nc} x H x W tensor, "
                             f"got shape {tuple(batch.shape)}")
        exact = ieee_fp32() if self.device.type == "cuda" else contextlib.nullcontext()
        # bf16: the float convolutions in bf16 (the binary units take fp32 and count exactly)
        lower = (torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16"
                 else contextlib.nullcontext())
        with self._lock, torch.no_grad(), exact, lower:
            x = batch.to(self.device, torch.float32).contiguous(memory_format=self._memory_format)
            out = self.net(x).float()
        return out.to(batch.device).contiguous()

    @property
    def bytes_per_pixel(self) -> float:
        """Peak activation bytes per input pixel of one forward pass (the measured model above)."""
        arch = archs.for_config(self.config)
        kernels = self.backend == "bitpacked" and self.precision == "fp32"
        at_input, at_output = (arch.kernel_activation_tensors if kernels and arch.kernel_activation_tensors
                               else arch.activation_tensors)
        return 4.0 * self.config.nf * (at_input + at_output * self.scale ** 2)

    def tile_for(self, height: int, width: int, memory_bytes: int = DEFAULT_TILE_BYTES) -> int:
        """The tile side (input pixels, overlap excluded) for an image of this size and budget."""
        radius = self.info.receptive_radius
        return choose_tile(height, width, radius=radius, bytes_per_pixel=self.bytes_per_pixel,
                           memory_bytes=memory_bytes, min_tile=MIN_TILE_RADII * radius)

    def redundancy(self, height: int, width: int, tile: int) -> float:
        """Computed pixels per image pixel with this tile (the overlap's cost; 1.0 for one tile)."""
        return redundancy(height, width, tile, self.info.receptive_radius)

    def tile_batch(self, tile: int, memory_bytes: int = DEFAULT_TILE_BYTES) -> int:
        """Tiles per batch: on CUDA as many padded tiles as fit the budget, on the CPU one."""
        if self.device.type != "cuda":
            return 1  # the CPU kernels use every core on one tile already
        side = tile + 2 * self.info.receptive_radius
        return max(1, int(memory_bytes // (self.bytes_per_pixel * side * side)))

    def restore(self, image: Tensor, tile: int | None = None, progress: Progress | None = None,
                *, memory_bytes: int = DEFAULT_TILE_BYTES) -> Tensor:
        """Restore a host NCHW tensor of any size in seam-free tiles.

        ``tile`` is the tile side in input pixels; by default it is derived from ``memory_bytes``
        so that the activations of one tile stay within that budget whatever the image size. On
        CUDA, smaller tiles run several to a batch within the same budget.
        """
        h, w = image.shape[-2:]
        tile = tile or self.tile_for(h, w, memory_bytes)
        if h <= tile and w <= tile:
            out = self(image.to(self.device)).cpu()
            if progress is not None:
                progress(1, 1)
            return out
        return run_tiled(self, image, scale=self.scale, radius=self.info.receptive_radius,
                         tile=tile, device=self.device, progress=progress,
                         batch=self.tile_batch(tile, memory_bytes))


def from_checkpoint(ckpt: checkpoints.Checkpoint, *, name: str | None = None,
                    device: str | torch.device = "cpu", backend: str = "auto",
                    precision: str = "fp32") -> RestorationModel:
    net = checkpoints.build_network(ckpt)
    return RestorationModel(net, ckpt.config, name=name or Path(ckpt.source).stem,
                            sha256=ckpt.sha256, source=ckpt.source, device=device,
                            backend=backend, metadata=ckpt.metadata, precision=precision)


def from_network(net: nn.Module, config: NetworkConfig, *, name: str = "in-memory",
                 device: str | torch.device = "cpu", backend: str = "auto",
                 precision: str = "fp32") -> RestorationModel:
    """Wrap a training-mode network (its weights are copied into the deploy form)."""
    clone = archs.build(config)
    clone.load_state_dict(net.state_dict())
    return RestorationModel(clone, config, name=name, sha256="", source="memory",
                            device=device, backend=backend, precision=precision)


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu",
               backend: str = "auto", precision: str = "fp32") -> RestorationModel:
    """Load a checkpoint file (official or ours) or a shipped catalogue entry by name."""
    p = Path(name_or_path)
    if p.suffix in checkpoints.SUFFIXES or p.exists():
        return from_checkpoint(checkpoints.read(p), device=device, backend=backend, precision=precision)
    entry = catalog.by_name(str(name_or_path))
    return from_checkpoint(checkpoints.read(entry.path), name=entry.name, device=device,
                           backend=backend, precision=precision)


def load_for_task(task: str, scale: int | None = None, variant: str | None = None,
                  weights: str | Path | None = None, device: str | torch.device = "cpu",
                  backend: str = "auto", weights_dir: Path | None = None,
                  precision: str = "fp32") -> RestorationModel:
    """The model serving a request: explicit weights, else the shipped entry for the task."""
    if weights is not None:
        model = load_model(weights, device=device, backend=backend, precision=precision)
        if model.config.task != task or (task == "sr" and scale and model.scale != scale):
            raise UnknownModelError(
                f"weights {weights} hold a {model.config.task} x{model.scale} network, "
                f"not {task}" + (f" x{scale}" if task == "sr" and scale else ""))
        return model
    entry = catalog.find(task, scale, variant, weights_dir or catalog.WEIGHTS_DIR)
    return from_checkpoint(checkpoints.read(entry.path), name=entry.name, device=device,
                           backend=backend, precision=precision)


def load_chroma_partner(task: str, variant: str | None = None, weights: str | Path | None = None,
                        device: str | torch.device = "cpu", backend: str = "auto",
                        weights_dir: Path | None = None, precision: str = "fp32") -> RestorationModel | None:
    """The color network restoring a color photo's chroma beside the gray deblocker
    (``catalog.chroma_partner``); None for explicit weights or where none is shipped."""
    if weights is not None:
        return None
    entry = catalog.chroma_partner(task, variant, weights_dir or catalog.WEIGHTS_DIR)
    if entry is None:
        return None
    return from_checkpoint(checkpoints.read(entry.path), name=entry.name, device=device, backend=backend,
                           precision=precision)
