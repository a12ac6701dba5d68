"""Small random-init BBCU networks for tests (every variant), saved in the official formats."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models import checkpoints, deploy
from models.blocks import BinaryConv2d, BinaryUpConv2d
from models.config import NetworkConfig, deblock_config, denoise_config, sr_config
from models.testing import random_net, randomize

__all__ = ["random_net", "randomize", "small_configs", "save_official", "save_ours", "deploy_unit"]


def small_configs(nf: int = 16) -> dict[str, NetworkConfig]:
    return {
        "sr-l-x2": sr_config(2, "l", nf=nf, depth=2),
        "sr-l-x3": sr_config(3, "l", nf=nf, depth=2),
        "sr-l-x4": sr_config(4, "l", nf=nf, depth=2),
        "sr-m-x2": sr_config(2, "m", nf=nf, depth=2),
        "sr-m-x3": sr_config(3, "m", nf=nf, depth=2),
        "sr-m-x4": sr_config(4, "m", nf=nf, depth=2),
        "sr-all-x2": sr_config(2, "head+body+up+tail", nf=nf, depth=1),
        "denoise": denoise_config(nf=nf, depth=5),
        "deblock": deblock_config(nf=nf, depth=5),
    }


def save_official(tmp: Path, config: NetworkConfig, seed: int = 0, *, key: str = "params",
                  prefix: str = "") -> tuple[Path, nn.Module]:
    net = random_net(config, seed)
    sd = {prefix + k: v for k, v in net.state_dict().items()}
    path = tmp / f"{config.task}-x{config.scale}-{config.variant.replace(':', '_')}-{seed}.pth"
    torch.save({key: sd} if config.task == "sr" else sd, path)
    return path, net


def save_ours(weights_dir: Path, name: str, config: NetworkConfig, seed: int = 0) -> Path:
    net = random_net(config, seed)
    return checkpoints.save(weights_dir / f"{name}.safetensors", net, config,
                            {"provenance": "random init for tests"})


def deploy_unit(cin: int, cout: int, seed: int, up: int = 1, bias: bool = False) -> deploy.DeployUnit:
    """One random BBCU (or BBCU-U with ``up`` > 1) in deploy form, every sign pattern likely."""
    torch.manual_seed(seed)
    m = BinaryUpConv2d(cin, up) if up > 1 else BinaryConv2d(cin, cout, bias=bias)
    randomize(m, seed)
    return deploy.DeployUnit(m).eval()
