"""Reading, canonicalizing, detecting and writing BBCU checkpoints.

Accepted: official BasicSR SR checkpoints (``{'params': sd}`` or ``params_ema``, optional
``module.`` prefix), official KAIR denoise/deblock checkpoints (a plain state dict), both read with
``torch.load(weights_only=True)``; and our own safetensors files whose metadata carries the network
configuration. Nothing is ever unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models import archs
from models.config import NetworkConfig
from models.errors import (
    CheckpointMismatchError,
    CheckpointReadError,
    UnsupportedCheckpointError,
)
from models.hashing import sha256_file

FORMAT_TAG = "bbcu-safetensors-1"
# file name endings of the checkpoint files we read (anything else is looked up by name)
SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net")


@dataclass
class Checkpoint:
    """A canonical state dict, the configuration detected from it, and where it came from."""

    state_dict: dict[str, Tensor]
    config: NetworkConfig
    sha256: str
    source: str
    format: str
    metadata: dict[str, Any] = field(default_factory=dict)




def canonicalize(obj: object) -> dict[str, Tensor]:
    """Unwrap BasicSR/KAIR containers and strip DataParallel prefixes."""
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise UnsupportedCheckpointError(
            f"expected a state dict (a mapping of names to tensors), found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise UnsupportedCheckpointError(
            f"expected a state dict of tensors; {len(bad)} entries are not, e.g. {bad[:3]!r} "
            f"(top-level keys: {sorted(map(str, obj))[:8]})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def detect(sd: dict[str, Tensor]) -> NetworkConfig:
    config = archs.detect(sd)
    if config is not None:
        return config
    sample = sorted(sd)[:6]
    raise UnsupportedCheckpointError(
        f"not a BBCU network: {len(sd)} tensors, first keys {sample}; expected SR keys "
        "('conv_first.*', 'body.N.body.M.*') or DnCNN keys ('model.N.*')")


def _refusal(path: Path, error: Exception) -> str:
    """Why a file torch's safe loader refused is not a checkpoint (not torch's advice to unpickle it)."""
    with path.open("rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):
        return (f"{path.name}: not a checkpoint: neither a PyTorch archive (.pth/.pt), nor a pickle, "
                "nor a .safetensors file")
    found = re.search(r"GLOBAL (\S+)", str(error))
    what = f" (e.g. {found.group(1)})" if found else ""
    return (f"{path.name}: refused to load: it holds Python objects other than tensors{what}; "
            "a checkpoint holds only tensors and plain containers")


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointReadError(_refusal(path, e)) from e
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError, UnicodeDecodeError,
            struct.error, KeyError, IndexError, TypeError, AttributeError, AssertionError) as e:
        # torch raises all of these (asserts included) on malformed archives
        raise CheckpointReadError(
            f"{path.name}: not a readable PyTorch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'truncated'})") from e


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointReadError(f"{path.name}: not a readable safetensors file ({e})") from e
    return sd, meta


def read(path: str | Path) -> Checkpoint:
    """Read any accepted checkpoint file and detect its network."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointReadError(f"{p}: no such file")
    sha = sha256_file(p)
    if p.suffix == ".safetensors":
        sd, meta = _read_safetensors(p)
        metadata = {k: _maybe_json(v) for k, v in meta.items()}
        if "config" in metadata:
            try:
                config = NetworkConfig.from_dict(metadata["config"])
            except (TypeError, ValueError) as e:
                raise UnsupportedCheckpointError(f"{p.name}: bad network config in metadata: {e}") from e
        else:
            config = detect(canonicalize(sd))
        return Checkpoint(canonicalize(sd), config, sha, str(p), "safetensors", metadata)
    sd = canonicalize(_read_torch(p))
    return Checkpoint(sd, detect(sd), sha, str(p), "official")


def _maybe_json(v: str) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def build_network(ckpt: Checkpoint) -> nn.Module:
    """Build the detected network and load the tensors strictly."""
    net = archs.build(ckpt.config)
    try:
        net.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise CheckpointMismatchError(
            f"{Path(ckpt.source).name}: detected {ckpt.config.task} variant "
            f"{ckpt.config.variant} (nf={ckpt.config.nf}, depth={ckpt.config.depth}) but the tensors "
            f"do not fit: {' '.join(lines[1:4])[:400]}") from e
    return net.eval()


def save(path: str | Path, net: nn.Module, config: NetworkConfig,
         metadata: dict[str, Any] | None = None) -> Path:
    """Write our own checkpoint: safetensors with the configuration and provenance as metadata."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT_TAG, "config": config.to_json(), "task": config.task,
            "scale": str(config.scale), "k": repr(config.k), "variant": config.variant}
    for key, value in (metadata or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    tmp = p.with_suffix(p.suffix + ".tmp")
    save_file(sd, str(tmp), metadata=meta)
    tmp.replace(p)
    return p


def save_official(path: str | Path, net: nn.Module, config: NetworkConfig) -> Path:
    """Write a checkpoint in the authors' format (BasicSR for SR, KAIR for DnCNN)."""
    p = Path(path)
    sd = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    wrapper = archs.for_config(config).official_wrapper
    torch.save({wrapper: sd} if wrapper else sd, p)
    return p
