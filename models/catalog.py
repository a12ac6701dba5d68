"""The catalogue of shipped weights in ``models/weights`` (torch-free: reads safetensors headers).

Every ``*.safetensors`` file there is an entry named after its stem; its metadata (written by
``models.checkpoints.save``) gives task, scale, variant, training and evaluation facts.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from models.errors import UnknownModelError
from models.hashing import sha256_file
from models.vocab import scale_for

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# the training options that name files or folders of the machine that trained a network
TRAINING_PATH_OPTIONS = ("data", "init", "run_dir", "out")
_MAX_HEADER = 16 << 20


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    path: Path
    task: str
    scale: int
    variant: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        """Image channels the network takes (3 unless its config says otherwise)."""
        return int((self.metadata.get("config") or {}).get("in_nc", 3))

    def sha256(self) -> str:
        stat = self.path.stat()
        return _sha256(self.path, stat.st_size, stat.st_mtime_ns)

    def summary(self) -> dict[str, Any]:
        meta = self.metadata
        return {"name": self.name, "task": self.task, "scale": self.scale, "variant": self.variant,
                "file": self.path.name, "size_bytes": self.path.stat().st_size,
                "config": meta.get("config"), "eval": meta.get("eval"),
                "training": meta.get("training"), "provenance": meta.get("provenance")}

    def public_summary(self) -> dict[str, Any]:
        """The summary as the service shows it: training paths reduced to file names (where the
        trainer kept its data and runs is nobody's business; which corpus file it read is)."""
        out = self.summary()
        training = out.get("training")
        if isinstance(training, dict) and isinstance(training.get("config"), dict):
            config = dict(training["config"])
            for key in TRAINING_PATH_OPTIONS:
                value = config.get(key)
                if isinstance(value, str):
                    config[key] = _file_name(value)
                elif isinstance(value, list):
                    config[key] = [_file_name(v) if isinstance(v, str) else v for v in value]
            out["training"] = {**training, "config": config}
        return out


@lru_cache(maxsize=64)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """A weights file's checksum, read once per version of the file (every accepted job names it)."""
    return sha256_file(path)


def _file_name(path: str) -> str:
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def read_safetensors_metadata(path: Path) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors file, JSON values decoded, without loading tensors."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path.name}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER:
            raise ValueError(f"{path.name}: safetensors header of {n} bytes is implausible")
        header = json.loads(f.read(n))
    out: dict[str, Any] = {}
    for k, v in (header.get("__metadata__") or {}).items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def entries(weights_dir: Path = WEIGHTS_DIR) -> list[CatalogEntry]:
    found = []
    for p in sorted(weights_dir.glob("*.safetensors")):
        meta = read_safetensors_metadata(p)
        cfg = meta.get("config") or {}
        found.append(CatalogEntry(
            name=p.stem, path=p, task=str(meta.get("task", cfg.get("task", "?"))),
            scale=int(meta.get("scale", cfg.get("scale", 1))),
            variant=str(meta.get("variant", "l")), metadata=meta))
    return found


def find(task: str, scale: int | None = None, variant: str | None = None,
         weights_dir: Path = WEIGHTS_DIR, channels: int | None = None) -> CatalogEntry:
    """The shipped entry for a task (and scale / variant); a clear error if there is none."""
    want_scale = scale_for(task, scale)
    pool = [e for e in entries(weights_dir) if e.task == task and e.scale == want_scale]
    if variant is not None:
        pool = [e for e in pool if e.variant == variant.lower()]
    if channels is not None:
        pool = [e for e in pool if e.channels == channels]
    # without a choice, the paper's main network: BBCU-L, and the gray (Y) deblocker
    pool.sort(key=lambda e: (e.variant != "l", e.channels != 1 if e.task == "deblock" else False))
    if not pool:
        have = ", ".join(f"{e.name} ({e.task} x{e.scale} {e.variant})" for e in entries(weights_dir))
        raise UnknownModelError(
            f"no shipped weights for task={task} scale={want_scale}"
            + (f" variant={variant}" if variant else "") + (f" channels={channels}" if channels else "")
            + f"; available: {have or 'none'}")
    return pool[0]


def chroma_partner(task: str, variant: str | None = None,
                   weights_dir: Path = WEIGHTS_DIR) -> CatalogEntry | None:
    """The color network whose chroma a color photo takes beside the gray (Y) deblocker, if shipped.

    The gray deblocker restores JPEG's luma best, the color one also removes the chroma blocks the
    luma path leaves; taking each plane from the network better at it beats either network alone
    (docs/networks.md). The partner has the gray network's variant; explicit weights run alone.
    """
    if task != "deblock":
        return None
    gray = find(task, None, variant, weights_dir)
    if gray.channels != 1:
        return None
    pool = sorted((e for e in entries(weights_dir)
                   if e.task == task and e.channels == 3 and e.variant == gray.variant), key=lambda e: e.name)
    return pool[0] if pool else None


def pipeline(tasks: tuple[str, ...], scale: int | None = None, variant: str | None = None,
             weights_dir: Path = WEIGHTS_DIR) -> list[tuple[CatalogEntry, CatalogEntry | None]]:
    """Each stage's network and the color network a color photo's chroma takes beside it (deblock);
    UnknownModelError if a stage has none."""
    return [(find(t, scale, variant, weights_dir), chroma_partner(t, variant, weights_dir)) for t in tasks]


def by_name(name: str, weights_dir: Path = WEIGHTS_DIR) -> CatalogEntry:
    for e in entries(weights_dir):
        if e.name == name:
            return e
    names = [e.name for e in entries(weights_dir)]
    raise UnknownModelError(f"unknown model {name!r}; available: {names or 'none'}")
