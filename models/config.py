"""Network configuration shared by the architectures, checkpoints, engine and training (no torch)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from models.vocab import SR_SCALES, TASKS, VARIANT_PARTS, Task, default_k, scale_for

SR_PARTS = frozenset({"head", "body", "up", "tail"})
DNCNN_PARTS = frozenset({"head", "body", "tail"})


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to build a BBCU network.

    ``depth`` is the number of body blocks for SR (16 in the paper) and the number of layers for the
    DnCNN-style networks (20: a head conv, depth - 2 binary units, a tail conv).
    ``binary`` names the binary parts: head, body, up (upconvs and conv_hr), tail (conv_last).
    ``bias`` is whether the binary convs (and, for DnCNN, the float convs) carry a bias.
    """

    task: Task
    scale: int = 1
    in_nc: int = 3
    out_nc: int = 3
    nf: int = 64
    depth: int = 16
    binary: frozenset[str] = field(default_factory=lambda: VARIANT_PARTS["l"])
    bias: bool = False
    k: float = 130.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        allowed = SR_PARTS if self.task == "sr" else DNCNN_PARTS
        if not self.binary <= allowed or "body" not in self.binary:
            raise ValueError(f"binary parts {sorted(self.binary)} invalid for {self.task}: "
                             f"need 'body', choose from {sorted(allowed)}")
        if self.task == "sr" and self.scale not in SR_SCALES:
            raise ValueError(f"scale {self.scale} unsupported for sr: choose from {SR_SCALES}")
        if self.task != "sr" and self.scale != 1:
            raise ValueError(f"scale must be 1 for {self.task}")
        if self.nf < 1 or self.depth < (1 if self.task == "sr" else 3):
            raise ValueError(f"invalid width/depth nf={self.nf} depth={self.depth}")

    @property
    def variant(self) -> str:
        for name, parts in VARIANT_PARTS.items():
            if self.binary == parts:
                return name
        return "custom:" + "+".join(sorted(self.binary))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["binary"] = sorted(self.binary)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown network config fields: {sorted(unknown)}")
        d = dict(d)
        if "binary" in d:
            d["binary"] = frozenset(d["binary"])
        return cls(**d)


def sr_config(scale: int, variant: str = "l", nf: int = 64, depth: int = 16,
              k: float | None = None) -> NetworkConfig:
    return NetworkConfig(task="sr", scale=scale, in_nc=3, out_nc=3, nf=nf, depth=depth,
                         binary=parts_for(variant), bias=False,
                         k=default_k(nf) if k is None else k)


def denoise_config(nf: int = 64, depth: int = 20, k: float | None = None) -> NetworkConfig:
    return NetworkConfig(task="denoise", scale=1, in_nc=3, out_nc=3, nf=nf, depth=depth,
                         binary=VARIANT_PARTS["l"], bias=False,
                         k=default_k(nf) if k is None else k)


def deblock_config(nf: int = 64, depth: int = 20, k: float | None = None,
                   channels: int = 1) -> NetworkConfig:
    """The paper's deblocker restores gray (Y) images; ``channels=3`` is this project's color one."""
    return NetworkConfig(task="deblock", scale=1, in_nc=channels, out_nc=channels, nf=nf, depth=depth,
                         binary=VARIANT_PARTS["l"], bias=True,
                         k=default_k(nf) if k is None else k)


def parts_for(variant: str) -> frozenset[str]:
    """'l', 'm', or a '+'-joined list of parts such as 'head+body+up+tail'."""
    v = variant.lower().removeprefix("custom:")
    if v in VARIANT_PARTS:
        return VARIANT_PARTS[v]
    parts = frozenset(p for p in v.split("+") if p)
    if not parts <= SR_PARTS:
        raise ValueError(f"unknown variant {variant!r}: use l, m, or parts joined by '+' "
                         f"from {sorted(SR_PARTS)}")
    return parts


def config_for(task: str, scale: int | None = None, variant: str = "l", nf: int = 64,
               depth: int | None = None, channels: int | None = None) -> NetworkConfig:
    if task == "sr":
        return sr_config(scale_for(task, scale), variant, nf, depth or 16)
    if task == "denoise":
        return denoise_config(nf, depth or 20)
    if task == "deblock":
        return deblock_config(nf, depth or 20, channels=channels or 1)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
