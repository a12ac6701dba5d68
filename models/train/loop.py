"""The BBCU training loop (Xia et al., ICLR 2023, recipe in docs/training.md), CPU or CUDA.

L1 loss, Adam (betas 0.9, 0.99), step-wise learning-rate halving, a fixed seed, periodic
validation PSNR on held-out images (never a benchmark image), a tqdm progress bar (loss, lr, ETA),
a resumable training-state file written often (``state.pt`` in the run folder), optional
initialisation from another checkpoint (tensors matching in name and shape are copied, e.g. the body
and ``conv_first`` of an x2 network into an x3/x4 one), and the final weights written with
``models.checkpoints.save`` together with the training metadata.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from models import archs, checkpoints
from models.config import NetworkConfig, config_for
from models.train.data import (
    DegradeSpec,
    PatchSampler,
    TrainImage,
    data_manifest_sha256,
    load_sources,
    split_holdout,
    validation_pairs,
)
from models.vocab import TASKS, scale_for

Log = Callable[[str], None]
STATE_FORMAT = "bbcu-train-state-1"


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a run; :func:`recipe` fills the paper's defaults per task."""

    task: str
    data: tuple[str, ...]
    scale: int = 1
    variant: str = "l"
    channels: int | None = None
    quality_min: int = 0
    quality_max: int = 50
    nf: int = 64
    depth: int | None = None
    iters: int = 300_000
    batch: int = 16
    patch: int = 128
    lr: float = 1e-4
    milestones: tuple[int, ...] = (200_000,)
    gamma: float = 0.5
    betas: tuple[float, float] = (0.9, 0.99)
    seed: int = 0
    val_every: int = 100
    val_images: int = 3
    save_every: int = 25
    max_minutes: float | None = None
    min_gradient: float = 2.0
    device: str = "cpu"
    threads: int | None = None
    init: str | None = None
    tail_scale: float = 0.1
    shift_lr_mult: float = 1.0
    run_dir: str = "runs/train"
    out: str | None = None

    def network(self) -> NetworkConfig:
        return config_for(self.task, self.scale if self.task == "sr" else None, self.variant, self.nf,
                          self.depth, channels=self.channels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recipe(task: str, scale: int | None = None) -> dict[str, Any]:
    """The paper's defaults (docs/training.md) for a task."""
    if task == "sr":
        return {"scale": scale_for(task, scale), "batch": 16, "patch": 128, "iters": 300_000, "lr": 1e-4,
                "milestones": (200_000,)}
    if task in ("denoise", "deblock"):
        return {"scale": 1, "batch": 32, "patch": 64, "iters": 500_000, "lr": 1e-4,
                "milestones": (200_000, 300_000, 400_000)}
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


@dataclass
class TrainResult:
    weights: Path | None
    state: Path
    iterations: int
    wall_seconds: float
    final_loss: float
    val_psnr: list[tuple[int, float]] = field(default_factory=list)


def lr_at(cfg: TrainConfig, it: int) -> float:
    """Learning rate for iteration ``it`` (0-based): halved at each milestone passed."""
    return cfg.lr * cfg.gamma ** sum(1 for m in cfg.milestones if it >= m)


def init_from(net: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Copy the tensors of a checkpoint whose names and shapes match; returns (copied, skipped)."""
    src = checkpoints.read(path).state_dict
    own = net.state_dict()
    copied = [k for k, v in src.items() if k in own and own[k].shape == v.shape]
    skipped = sorted(set(own) - set(copied))
    net.load_state_dict({**own, **{k: src[k] for k in copied}})
    return copied, skipped


_SHIFT_SUFFIXES = ("move0.bias", "pr_bias0.bias", "pr_bias1.bias")


def _param_groups(net: nn.Module) -> tuple[list[str], list[str]]:
    """(other parameter names, learnable-shift names) in ``named_parameters`` order."""
    names = [n for n, _ in net.named_parameters()]
    shifts = [n for n in names if n.endswith(_SHIFT_SUFFIXES)]
    return [n for n in names if n not in set(shifts)], shifts


def make_optimizer(net: nn.Module, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with two groups: the BBCU learnable shifts (move0, RPReLU biases) may get a larger lr.

    The shifts act on features amplified by k (130): with the paper's 300k iterations lr 1e-4 moves
    them far enough, a short run needs ``shift_lr_mult`` > 1 for the signs to become informative.
    """
    params = dict(net.named_parameters())
    others, shifts = _param_groups(net)
    return torch.optim.Adam([
        {"params": [params[n] for n in others], "lr_mult": 1.0},
        {"params": [params[n] for n in shifts], "lr_mult": cfg.shift_lr_mult},
    ], lr=cfg.lr, betas=cfg.betas)


def regroup_optimizer_state(saved: dict[str, Any], net: nn.Module,
                            opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Adapt a saved Adam state to this run's groups (a state saved with one group still loads)."""
    current = opt.state_dict()
    if len(saved["param_groups"]) == len(current["param_groups"]):
        for g_saved, g_now in zip(saved["param_groups"], current["param_groups"], strict=True):
            g_saved["lr_mult"] = g_now["lr_mult"]
        return saved
    names = [n for n, _ in net.named_parameters()]
    old_index = {n: i for i, n in enumerate(names)}  # one group in named_parameters order
    others, shifts = _param_groups(net)
    state = {new: saved["state"][old_index[n]] for new, n in enumerate(others + shifts)
             if old_index[n] in saved["state"]}
    return {"state": state, "param_groups": current["param_groups"]}


def scale_tail(net: nn.Module, factor: float) -> None:
    """Shrink the DnCNN tail conv at init so the network starts close to the identity (it predicts
    almost no degradation); the SR networks already scale their float convs by 0.1 when built."""
    tail = getattr(net, "model", None)
    if isinstance(tail, nn.Sequential) and isinstance(tail[-1], nn.Conv2d):
        with torch.no_grad():
            tail[-1].weight.mul_(factor)


def psnr_tensor(out: Tensor, gt: Tensor, border: int, luma: bool) -> float:
    """PSNR of 8-bit-quantized output, on BT.601 Y (``luma``) or on all channels."""
    a = (out.clamp(0, 1) * 255).round()
    b = (gt.clamp(0, 1) * 255).round()
    if luma and a.shape[1] == 3:
        w = torch.tensor([65.481, 128.553, 24.966], device=a.device).view(1, 3, 1, 1) / 255
        a, b = (a * w).sum(1, keepdim=True) + 16, (b * w).sum(1, keepdim=True) + 16
    if border:
        a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def validate(net: nn.Module, pairs: list[tuple[Tensor, Tensor]], cfg: TrainConfig,
             device: torch.device) -> float:
    net.eval()
    scores = []
    with torch.no_grad():
        for lq, gt in pairs:
            out = net(lq.to(device)).cpu()
            scores.append(psnr_tensor(out, gt, cfg.scale if cfg.task == "sr" else 0, cfg.task == "sr"))
    net.train()
    return float(np.mean(scores))


def _state_path(cfg: TrainConfig) -> Path:
    return Path(cfg.run_dir) / "state.pt"


def save_state(path: Path, net: nn.Module, opt: torch.optim.Optimizer, sampler: PatchSampler,
               cfg: TrainConfig, it: int, elapsed: float, history: list[tuple[int, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": STATE_FORMAT, "iteration": it, "elapsed": elapsed, "net": net.state_dict(),
             "optimizer": opt.state_dict(), "sampler": sampler.get_state(),
             "torch_rng": torch.get_rng_state(), "config": cfg.network().to_dict(),
             "val": [list(v) for v in history]}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_state(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a BBCU training-state file")
    return state


def train(cfg: TrainConfig, *, resume: bool = False, log: Log = print,
          progress: bool = True) -> TrainResult:
    """Run (or resume) a training run; returns where the weights and state went."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    torch.manual_seed(cfg.seed)
    ncfg = cfg.network()
    sources = load_sources([Path(d) for d in cfg.data])
    train_files, held = split_holdout(sources, cfg.val_images)
    log(f"data: {len(train_files)} training images, {len(held)} held out for validation")
    spec = DegradeSpec(cfg.task, cfg.patch, ncfg.scale, min_gradient=cfg.min_gradient,
                       channels=ncfg.in_nc, quality_min=cfg.quality_min, quality_max=cfg.quality_max)
    images = [im for im in (t.rgb() for t in train_files) if min(im.shape[:2]) >= cfg.patch]
    sampler = PatchSampler(images, spec, seed=cfg.seed)
    pairs = validation_pairs([t.rgb() for t in held], spec)
    net = archs.build(ncfg).to(device)
    opt = make_optimizer(net, cfg)
    start, elapsed, history = 0, 0.0, []
    state_path = _state_path(cfg)
    if resume:
        st = load_state(state_path)
        if st["config"] != ncfg.to_dict():
            raise ValueError(f"{state_path}: the saved network {st['config']} differs from this run's")
        net.load_state_dict(st["net"])
        opt.load_state_dict(regroup_optimizer_state(st["optimizer"], net, opt))
        sampler.set_state(st["sampler"])
        torch.set_rng_state(st["torch_rng"])
        start, elapsed = int(st["iteration"]), float(st["elapsed"])
        history = [(int(i), float(p)) for i, p in st["val"]]
        log(f"resumed {state_path} at iteration {start}")
    elif cfg.init:
        copied, skipped = init_from(net, cfg.init)
        log(f"initialised {len(copied)} tensors from {cfg.init}; {len(skipped)} left as built")
    else:
        scale_tail(net, cfg.tail_scale)
    loss_fn = nn.L1Loss()
    t0 = time.monotonic() - elapsed
    it, loss_v = start, float("nan")
    bar = tqdm(total=cfg.iters, initial=start, disable=not progress, dynamic_ncols=True, mininterval=5)
    net.train()
    while it < cfg.iters:
        lr = lr_at(cfg, it)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        lq, gt = sampler.sample(cfg.batch)
        out = net(lq.to(device, non_blocking=True))
        loss = loss_fn(out, gt.to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        loss_v = float(loss.detach())
        bar.update(1)
        bar.set_postfix(loss=f"{loss_v:.4f}", lr=f"{lr:.1e}", refresh=False)
        out_of_time = cfg.max_minutes is not None and time.monotonic() - t0 > cfg.max_minutes * 60
        if pairs and (it % cfg.val_every == 0 or it == cfg.iters or out_of_time):
            v = validate(net, pairs, cfg, device)
            history.append((it, v))
            bar.write(f"iter {it}: loss {loss_v:.4f} lr {lr:.1e} val PSNR {v:.2f} dB "
                      f"({time.monotonic() - t0:.0f} s)")
        if it % cfg.save_every == 0 or it == cfg.iters or out_of_time:
            save_state(state_path, net, opt, sampler, cfg, it, time.monotonic() - t0, history)
        if out_of_time:
            bar.write(f"stopping at iteration {it}: time limit of {cfg.max_minutes} min reached")
            break
    bar.close()
    wall = time.monotonic() - t0
    save_state(state_path, net, opt, sampler, cfg, it, wall, history)
    weights = None
    if cfg.out:
        weights = save_weights(Path(cfg.out), net, cfg, it, wall, history, sources, device)
        log(f"wrote {weights}")
    return TrainResult(weights, state_path, it, wall, loss_v, history)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def save_weights(path: Path, net: nn.Module, cfg: TrainConfig, iterations: int, wall: float,
                 history: list[tuple[int, float]], sources: list[TrainImage], device: torch.device,
                 provenance: dict[str, Any] | None = None) -> Path:
    """Write the shipped-format weights with training metadata (the ``eval`` key comes later)."""
    net_cpu = archs.build(cfg.network())
    net_cpu.load_state_dict({k: v.detach().cpu() for k, v in net.state_dict().items()})
    training = {"config": replace(cfg, out=None).to_dict(), "iterations": iterations,
                "wall_seconds": round(wall, 1), "device": device_name(device),
                "data_manifest_sha256": data_manifest_sha256(sources),
                "data": [Path(d).name for d in cfg.data], "images": len(sources),
                "val_psnr": [list(v) for v in history],
                "torch": torch.__version__}
    prov = provenance or {
        "method": "BBCU (Xia et al., ICLR 2023), trained from scratch by this project"
                  + (f", initialised from {Path(cfg.init).name}" if cfg.init else ""),
        "data": "open corpus (bbcu corpus: Debian wallpaper photos, PyPI mvtb-data, train-extra); "
                "no benchmark image",
        "license": "MIT (weights); training images keep their own licences"}
    return checkpoints.save(path, net_cpu, cfg.network(), metadata={"training": training,
                                                                    "provenance": prov})
